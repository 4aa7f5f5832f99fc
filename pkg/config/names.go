// Package config parses and validates berth's network configs and the CNI
// runtime arguments. It is pure: no file, netlink or netfilter access.
// Every error is a *cnierr.FieldError (code 7) or *cnierr.EnvError (code 4)
// naming the key and the value.
package config

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/owner"
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

// Attachment validates the network name, CNI_CONTAINERID and CNI_IFNAME
// and returns the owner they name: what every command of a plugin tags and
// finds its state by.
func Attachment(network, containerID, ifName string) (owner.Owner, error) {
	if err := ValidateNetworkName(network); err != nil {
		return owner.Owner{}, err
	}
	if err := ValidateContainerID(containerID); err != nil {
		return owner.Owner{}, err
	}
	if err := ValidateIfName(ifName); err != nil {
		return owner.Owner{}, err
	}
	return owner.Owner{Network: network, ContainerID: containerID, IfName: ifName}, nil
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

// decodeConfig decodes stdin into conf (a plugin's config, which embeds
// netconf), checks the network name and decodes and checks the "ipam"
// section.
func decodeConfig(stdin []byte, conf any, netconf *types.NetConf) (IPAM, error) {
	var raw struct {
		IPAM json.RawMessage `json:"ipam"`
	}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return IPAM{}, decodeError(err)
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return IPAM{}, decodeError(err)
	}
	if err := ValidateNetworkName(netconf.Name); err != nil {
		return IPAM{}, err
	}
	return decodeIPAM(raw.IPAM)
}

// macRequest is where a runtime may ask for the container interface's MAC.
type macRequest struct {
	Own      string // the plugin's own config key ("mac" in macvlan), lowest priority
	OwnField string // that key's name
	CNIArgs  string // the whole CNI_ARGS string (its MAC=)
	ArgsCNI  string // args.cni.mac
	Runtime  string // runtimeConfig.mac (capability "mac"), highest priority
}

// argsMAC is the "args" key's part a plugin reads: args.cni.mac.
type argsMAC struct {
	Cni struct {
		Mac string `json:"mac,omitempty"`
	} `json:"cni,omitempty"`
}

// runtimeMAC is the "runtimeConfig" key's part for capability "mac".
type runtimeMAC struct {
	Mac string `json:"mac,omitempty"`
}

// macArgs is the part of CNI_ARGS berth reads (as upstream: MAC; IP is read
// by the IPAM plugin itself).
type macArgs struct {
	types.CommonArgs
	MAC types.UnmarshallableString `json:"mac,omitempty"`
	IP  types.UnmarshallableString `json:"ip,omitempty"`
}

// parse returns the requested MAC, or nil. The sources are taken lowest to
// highest priority, in upstream's order: the plugin's own key, CNI_ARGS
// MAC, args.cni.mac, runtimeConfig.mac.
func (r macRequest) parse() (net.HardwareAddr, error) {
	field, mac := r.OwnField, r.Own
	if r.CNIArgs != "" {
		var e macArgs
		if err := types.LoadArgs(r.CNIArgs, &e); err != nil {
			return nil, cnierr.Env("CNI_ARGS", r.CNIArgs, err, "cannot parse")
		}
		if e.MAC != "" {
			field, mac = "CNI_ARGS MAC", string(e.MAC)
		}
	}
	if r.ArgsCNI != "" {
		field, mac = "args.cni.mac", r.ArgsCNI
	}
	if r.Runtime != "" {
		field, mac = "runtimeConfig.mac", r.Runtime
	}
	if mac == "" {
		return nil, nil
	}
	return ParseMAC(field, mac)
}

// validateMTU checks an "mtu" key: 0 (the kernel's choice) or 68..65535.
func validateMTU(mtu int) error {
	if mtu != 0 && (mtu < 68 || mtu > 65535) {
		return cnierr.Field("mtu", mtu, "must be between 68 and 65535")
	}
	return nil
}

// dataDir checks berth's "dataDir" key and fills in the default.
func dataDir(d string) (string, error) {
	if d == "" {
		return DefaultDataDir, nil
	}
	if !filepath.IsAbs(d) {
		return "", cnierr.Field("dataDir", d, "must be an absolute path")
	}
	return d, nil
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}
