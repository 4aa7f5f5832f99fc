// Package owner names one attachment (a container's interface on a
// network) and derives from it every kernel name and tag berth writes for
// that attachment: the host veth and temporary link names, the link alias,
// and the fixed-length hashes other packages build their names from. It is
// pure, and a leaf: every package that tags host state imports it and
// nothing of berth.
//
// The names are an API once released: never change a scheme.
package owner

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
)

// Owner names one attachment: a container's interface on a network.
type Owner struct {
	Network     string
	ContainerID string
	IfName      string
}

// String renders o for messages: "network/containerID/ifName".
func (o Owner) String() string { return o.Network + "/" + o.ContainerID + "/" + o.IfName }

// Hash is the first n hex digits (n ≤ 64) of SHA-256(network NUL
// containerID NUL ifName): the fixed-length part of the names derived from
// an attachment.
func (o Owner) Hash(n int) string {
	sum := sha256.Sum256([]byte(o.Network + "\x00" + o.ContainerID + "\x00" + o.IfName))
	return hex.EncodeToString(sum[:])[:n]
}

// Prefixes of the link names derived from an owner.
const (
	// HostVethPrefix starts the name of every host-side veth berth creates.
	HostVethPrefix = "bth"
	// TempLinkPrefix starts the name a container's macvlan has between its
	// creation and its rename to CNI_IFNAME inside the container.
	TempLinkPrefix = "bmt"
)

// HostVeth is the host-side veth name of the attachment: "bth" plus 12 hex
// digits of Hash — 15 bytes, the kernel's limit. A deterministic name lets
// DEL find the veth when the container's namespace is already gone.
func (o Owner) HostVeth() string { return HostVethPrefix + o.Hash(12) }

// TempLink is the temporary name of the attachment's macvlan: "bmt" and the
// same 12 hex digits as HostVeth. The link is born in the container's
// namespace under it (so CNI_IFNAME never clashes with a host interface of
// that name), and it is deterministic so that DEL finds a link a crashed
// ADD left unrenamed.
func (o Owner) TempLink() string { return TempLinkPrefix + o.Hash(12) }

const (
	// AliasPrefix starts every IFLA_IFALIAS berth writes.
	AliasPrefix = "berth:"
	// MaxAlias is the kernel's limit of an alias (IFALIASZ - 1).
	MaxAlias = 255
)

// Alias is the IFLA_IFALIAS tag of a link berth made for the attachment, so
// GC can find every attachment of a network from the kernel alone:
// "berth:<network>/<containerID>/<ifname>". Network names and container IDs
// cannot contain '/'. An alias that would pass the kernel's 255 bytes (a
// container ID over ~100 bytes) is empty: attachment records still find
// such an attachment.
func (o Owner) Alias() string {
	a := AliasPrefix + o.Network + "/" + o.ContainerID + "/" + o.IfName
	if len(a) > MaxAlias {
		return ""
	}
	return a
}

// ParseAlias reverses Alias; ok is false for links that are not an
// attachment's. Aliases are outside input: anyone with CAP_NET_ADMIN can
// write them.
func ParseAlias(s string) (o Owner, ok bool) {
	rest, found := strings.CutPrefix(s, AliasPrefix)
	if !found {
		return Owner{}, false
	}
	parts := strings.Split(rest, "/")
	if len(parts) != 3 || parts[0] == "" || parts[1] == "" || parts[2] == "" {
		return Owner{}, false
	}
	return Owner{Network: parts[0], ContainerID: parts[1], IfName: parts[2]}, true
}
