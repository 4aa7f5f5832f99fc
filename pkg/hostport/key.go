// Package hostport keeps the rule berth exists for: a host port is held by
// one container at a time. It has three parts:
//
//   - the reservations (store.go): one file per claimed (protocol, host
//     address, host port) under the portmap data directory, created under
//     one flock, so that of N concurrent claims of a port exactly one wins,
//     and an index per attachment so DEL frees exactly what that
//     attachment holds;
//   - the host check (listen.go): a claim overlapping a socket a host
//     process has bound is refused too;
//   - the datapath (nft.go, iptables.go): DNAT from the host port to the
//     container, looked up in one map per family on nftables, so an ADD
//     costs the same with 5 or 5,000 mappings on the host.
//
// Every kernel effect (the datapath, the probe sockets, route_localnet,
// conntrack) acts in the network namespace it is given, a *netns.NS; files
// are under the store's directory. The pure parts (keys, conflicts, the
// nftables elements of PlanNFT, the iptables plans) need no root and are
// tested as such, the nftables datapath over a recording fake.
package hostport

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

// fileName is the key's reservation file name inside its protocol-port
// directory: "any" for both families, else the address ("0.0.0.0", "::",
// "10.0.0.1", "fd00::1"). Addresses never contain '/'.
func (k Key) fileName() string {
	if !k.Addr.IsValid() {
		return "any"
	}
	return k.Addr.String()
}

// dirName is the key's protocol-port directory: "tcp-8080".
func (k Key) dirName() string { return k.Proto + "-" + strconv.Itoa(int(k.Port)) }

// parseDirName reverses dirName.
func parseDirName(s string) (proto string, port uint16, ok bool) {
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

// parseFileName reverses fileName.
func parseFileName(s string) (netip.Addr, bool) {
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
