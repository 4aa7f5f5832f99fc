// Package config parses and validates berth's network configs and the CNI
// runtime arguments. It is pure: no file, netlink or netfilter access.
// Every error is a *cnierr.FieldError (code 7) or *cnierr.EnvError (code 4)
// naming the key and the value.
package config

import (
	"fmt"
	"net"
	"strings"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// MaxNetworkName is the longest network name berth accepts: the name becomes
// a directory name and part of kernel object tags (link aliases, nft
// comments), which have fixed limits.
const MaxNetworkName = 128

// MaxIfName is IFNAMSIZ-1, the kernel's limit for a link name.
const MaxIfName = 15

// ValidateNetworkName checks a network name as the CNI spec defines it
// (alphanumerics, '-', '_', '.', starting with an alphanumeric): it is used
// as a directory name, so it must not escape one.
func ValidateNetworkName(name string) error {
	if name == "" {
		return cnierr.Field("name", name, "a network name is required")
	}
	if len(name) > MaxNetworkName {
		return cnierr.Field("name", name, "longer than %d bytes", MaxNetworkName)
	}
	if !isAlnum(name[0]) {
		return cnierr.Field("name", name, "must start with a letter or digit")
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return cnierr.Field("name", name, "character %q not allowed (letters, digits, '-', '_', '.')", c)
		}
	}
	return nil
}

// ValidateContainerID checks CNI_CONTAINERID as the spec defines it; it is
// used in file names and kernel object tags.
func ValidateContainerID(id string) error {
	if id == "" {
		return cnierr.Env("CNI_CONTAINERID", id, nil, "a container ID is required")
	}
	if len(id) > 256 {
		return cnierr.Env("CNI_CONTAINERID", id, nil, "longer than 256 bytes")
	}
	if !isAlnum(id[0]) {
		return cnierr.Env("CNI_CONTAINERID", id, nil, "must start with a letter or digit")
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; !isAlnum(c) && c != '-' && c != '_' && c != '.' {
			return cnierr.Env("CNI_CONTAINERID", id, nil, "character %q not allowed", c)
		}
	}
	return nil
}

// ValidateLinkName checks a kernel link name (at most 15 bytes, no '/',
// ':' or white space, not "." or ".."). field names where it came from.
func ValidateLinkName(field, name string) error {
	if err := linkNameProblem(name); err != "" {
		return cnierr.Field(field, name, "%s", err)
	}
	return nil
}

// ValidateIfName checks CNI_IFNAME, the container-side interface name.
func ValidateIfName(name string) error {
	if err := linkNameProblem(name); err != "" {
		return cnierr.Env("CNI_IFNAME", name, nil, "%s", err)
	}
	return nil
}

func linkNameProblem(name string) string {
	switch {
	case name == "":
		return "an interface name is required"
	case len(name) > MaxIfName:
		return fmt.Sprintf("longer than %d bytes", MaxIfName)
	case name == "." || name == "..":
		return "not a valid interface name"
	case strings.ContainsAny(name, "/: \t\n\r\x00"):
		return "must not contain '/', ':' or white space"
	}
	return ""
}

// ParseMAC parses a unicast MAC address given under field.
func ParseMAC(field, s string) (net.HardwareAddr, error) {
	mac, err := net.ParseMAC(s)
	if err != nil || len(mac) != 6 {
		return nil, cnierr.Field(field, s, "not an Ethernet MAC address")
	}
	if mac[0]&1 == 1 {
		return nil, cnierr.Field(field, s, "a multicast MAC cannot be an interface address")
	}
	return mac, nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
