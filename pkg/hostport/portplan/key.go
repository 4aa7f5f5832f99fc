// Package portplan is the pure part of package hostport: the keys a
// container may hold and when two of them overlap, the names of their
// reservation files, the attachments that hold them, the elements the
// nftables datapath puts in table inet berth-portmap (PlanNFT), and the
// iptables-restore payloads of the iptables datapath and their check
// (IPTOpts.Plan, PlanIPTAdd, PlanIPTRemove, IPTWant.Check). It is pure:
// plain values in and out, no netlink, nftables, programs or files.
// Package hostport reads the kernel (a set's elements, iptables-save
// output) and its data directory into these values and applies the plans.
package portplan

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Key is what one container may hold: a protocol, a host address and a
// host port. Addr is the zero Addr for "every local address of both
// families" (a mapping without hostIP), an unspecified address (0.0.0.0,
// ::) for every address of its family, or one address.
type Key struct {
	Proto string // tcp, udp, sctp
	Addr  netip.Addr
	Port  uint16
}

func (k Key) String() string {
	return fmt.Sprintf("%s %s", k.Proto, k.hostPort())
}

// hostPort renders the address and port as a person reads them:
// "*:8080" for both families, "0.0.0.0:8080", "[::]:8080", "10.0.0.1:8080".
func (k Key) hostPort() string {
	if !k.Addr.IsValid() {
		return "*:" + strconv.Itoa(int(k.Port))
	}
	return netip.AddrPortFrom(k.Addr, k.Port).String()
}

// Overlaps reports whether a and b cannot both be held: same protocol and
// port, and addresses that can receive the same packet. "Every address"
// overlaps every address of its family (both families, for the zero
// Addr); two different specific addresses do not overlap.
func (a Key) Overlaps(b Key) bool {
	return a.Proto == b.Proto && a.Port == b.Port && addrsOverlap(a.Addr, b.Addr)
}

func addrsOverlap(a, b netip.Addr) bool {
	if !a.IsValid() || !b.IsValid() {
		return true
	}
	if a.Is4() != b.Is4() {
		return false
	}
	return a == b || a.IsUnspecified() || b.IsUnspecified()
}

// Families says which address families a key's address covers.
func (k Key) Families() (v4, v6 bool) {
	if !k.Addr.IsValid() {
		return true, true
	}
	return k.Addr.Is4(), k.Addr.Is6()
}

// FileName is the key's reservation file name inside its protocol-port
// directory: "any" for both families, else the address ("0.0.0.0", "::",
// "10.0.0.1", "fd00::1"). Addresses never contain '/'.
func (k Key) FileName() string {
	if !k.Addr.IsValid() {
		return "any"
	}
	return k.Addr.String()
}

// DirName is the key's protocol-port directory: "tcp-8080".
func (k Key) DirName() string { return k.Proto + "-" + strconv.Itoa(int(k.Port)) }

// ParseDirName reverses DirName; ok is false for a name DirName does not
// make.
func ParseDirName(s string) (proto string, port uint16, ok bool) {
	proto, p, found := strings.Cut(s, "-")
	if !found || !validProto(proto) {
		return "", 0, false
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 || strconv.FormatUint(n, 10) != p {
		return "", 0, false
	}
	return proto, uint16(n), true
}

// ParseFileName reverses FileName; ok is false for a name FileName does
// not make.
func ParseFileName(s string) (netip.Addr, bool) {
	if s == "any" {
		return netip.Addr{}, true
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" || a.Is4In6() || a.String() != s {
		return netip.Addr{}, false
	}
	return a, true
}

func validProto(p string) bool { return p == "tcp" || p == "udp" || p == "sctp" }

// ProtoNumber is the IP protocol number of a mapping protocol.
func ProtoNumber(p string) uint8 {
	switch p {
	case "tcp":
		return 6
	case "udp":
		return 17
	case "sctp":
		return 132
	}
	return 0
}
