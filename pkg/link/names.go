// Package link creates, inspects and deletes the links berth owns: bridges,
// veth pairs and their addresses, with netlink in the calling thread's
// network namespace (the host's) or, for container-side work, inside the
// container's namespace. Names and tags are pure functions in this file.
package link

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// HostVethPrefix starts the name of every host-side veth berth creates.
// Host veth names are an API once released: never change the scheme.
const HostVethPrefix = "bth"

// Owner names one attachment: a container's interface on a network.
type Owner struct {
	Network     string
	ContainerID string
	IfName      string
}

// HostVethName is the host-side veth name for an attachment: "bth" plus 12
// hex digits of SHA-256(network \0 containerID \0 ifname) — 15 bytes, the
// kernel's limit. A deterministic name lets DEL find the veth when the
// container's namespace is already gone.
func HostVethName(o Owner) string {
	sum := sha256.Sum256([]byte(o.Network + "\x00" + o.ContainerID + "\x00" + o.IfName))
	return HostVethPrefix + hex.EncodeToString(sum[:])[:12]
}

const aliasPrefix = "berth:"

// Alias is the IFLA_IFALIAS tag set on a host veth so GC can find every
// attachment of a network from the kernel alone:
// "berth:<network>/<containerID>/<ifname>". Network names and container IDs
// cannot contain '/'. An alias that would pass the kernel's 255 bytes (a
// container ID over ~100 bytes) is left empty: attachment records still
// find such an attachment.
func Alias(o Owner) string {
	a := aliasPrefix + o.Network + "/" + o.ContainerID + "/" + o.IfName
	if len(a) > maxAlias {
		return ""
	}
	return a
}

const maxAlias = 255

// ParseAlias reverses Alias; ok is false for links that are not berth's.
func ParseAlias(s string) (o Owner, ok bool) {
	rest, found := strings.CutPrefix(s, aliasPrefix)
	if !found {
		return Owner{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return Owner{}, false
	}
	return Owner{Network: parts[0], ContainerID: parts[1], IfName: parts[2]}, true
}
