package portplan

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/berth-cni/berth/pkg/cidr"
)

// NFTTable is the table berth's portmap owns, in family inet:
//
//	table inet berth-portmap {
//	  map any4  { type inet_proto . inet_service : ipv4_addr . inet_service }            # no hostIP, 0.0.0.0
//	  map addr4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service } # one hostIP
//	  set hairpin4 { type ipv4_addr . ipv4_addr; flags interval }   # source range . container
//	  set masqall4 { type ipv4_addr . inet_proto . inet_service }   # container . proto . port
//	  (the same four for IPv6)
//	  chain prerouting  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports }
//	  chain output      { type nat hook output priority dstnat; fib daddr type local jump hostports }
//	  chain hostports {
//	    meta nfproto ipv4 dnat ip to ip daddr . meta l4proto . th dport map @addr4
//	    meta nfproto ipv4 dnat ip to meta l4proto . th dport map @any4
//	    (the same for ip6)
//	  }
//	  chain postrouting { type nat hook postrouting priority srcnat
//	    ct status dnat ip saddr . ip daddr @hairpin4 masquerade
//	    ct status dnat ip daddr . meta l4proto . th dport @masqall4 masquerade
//	    (the same for ip6)
//	  }
//	}
//
// The chains and rules are fixed and created in one transaction with the
// table; an ADD or DEL changes only map and set elements, so its cost does
// not grow with the mappings already on the host, and a packet finds its
// mapping with one map lookup. Specific-address mappings come first: they
// win over a wildcard of another protocol-port... of the same container
// (another container cannot hold an overlapping wildcard). Package
// hostport creates the table; PlanNFT computes the elements of its sets.
const NFTTable = "berth-portmap"

// SetKind is one of the four kinds of set in table inet berth-portmap;
// with a family's suffix ("4", "6") it names a set: any4, hairpin6.
type SetKind string

// The kinds, in the order the table declares them (and nft lists them).
const (
	SetAny     SetKind = "any"     // map: proto . host port : container address . port
	SetAddr    SetKind = "addr"    // map: host address . proto . host port : container address . port
	SetHairpin SetKind = "hairpin" // interval set: source range . container address
	SetMasqAll SetKind = "masqall" // set: container address . proto . container port
)

// SetKinds are the kinds in that order.
var SetKinds = [...]SetKind{SetAny, SetAddr, SetHairpin, SetMasqAll}

// SetNames are the table's sets in the order it declares them: the IPv4
// family's four, then the IPv6 family's.
var SetNames = func() (out [2 * len(SetKinds)]string) {
	for i, sfx := range []string{"4", "6"} {
		for j, k := range SetKinds {
			out[i*len(SetKinds)+j] = string(k) + sfx
		}
	}
	return out
}()

// setOrder is the position of a set in SetNames.
func setOrder(set string) int { return slices.Index(SetNames[:], set) }

// Elem is one element of table inet berth-portmap: the set it is in, its
// key and, in a map, the target the key leads to. Which fields make the
// key depends on the kind (nft's syntax, as `nft list` prints it):
//
//	any4     { tcp . 8080 : 10.88.0.5 . 80 }             Proto . HostPort : Target
//	addr4    { 10.0.0.1 . udp . 53 : 10.88.0.5 . 5353 }  HostAddr . Proto . HostPort : Target
//	hairpin4 { 10.88.0.0/16 . 10.88.0.5 }                Src . Target's address
//	masqall4 { 10.88.0.5 . tcp . 80 }                    Target's address . Proto . Target's port
//
// The family is the target's. Every element berth writes carries its
// holder in Comment.
type Elem struct {
	Kind     SetKind
	Proto    string // tcp, udp, sctp
	HostAddr netip.Addr
	HostPort uint16
	Src      netip.Prefix   // hairpin: the sources that are masqueraded
	Target   netip.AddrPort // the container's address and port (port 0 in hairpin)
	Comment  string
}

// V6 reports whether e is in an IPv6 set.
func (e Elem) V6() bool { return e.Target.Addr().Is6() }

// Set is the name of e's set: any4, addr6, …
func (e Elem) Set() string {
	if e.V6() {
		return string(e.Kind) + "6"
	}
	return string(e.Kind) + "4"
}

// IsMap reports whether e's set is a map, whose elements have a value.
func (e Elem) IsMap() bool { return e.Kind == SetAny || e.Kind == SetAddr }

// Key is e reduced to what identifies it in its set: no comment, and in a
// map no target. Two elements with one key cannot both be in a set.
func (e Elem) Key() Elem {
	e.Comment = ""
	if e.IsMap() { // the value goes; the family stays
		if e.Target.Addr().Is4() {
			e.Target = netip.AddrPortFrom(netip.IPv4Unspecified(), 0)
		} else {
			e.Target = netip.AddrPortFrom(netip.IPv6Unspecified(), 0)
		}
	}
	return e
}

// KeyText renders e's key in nft's syntax: "tcp . 8080",
// "10.0.0.1 . udp . 53", "10.88.0.0/16 . 10.88.0.5", "10.88.0.5 . tcp . 80".
func (e Elem) KeyText() string {
	switch e.Kind {
	case SetAny:
		return fmt.Sprintf("%s . %d", e.Proto, e.HostPort)
	case SetAddr:
		return fmt.Sprintf("%s . %s . %d", e.HostAddr, e.Proto, e.HostPort)
	case SetHairpin:
		return fmt.Sprintf("%s . %s", e.Src, e.Target.Addr())
	case SetMasqAll:
		return fmt.Sprintf("%s . %s . %d", e.Target.Addr(), e.Proto, e.Target.Port())
	}
	return fmt.Sprintf("(%s element)", e.Kind)
}

// TargetText renders a map's value: "10.88.0.5 . 80".
func TargetText(t netip.AddrPort) string {
	return t.Addr().String() + " . " + strconv.Itoa(int(t.Port()))
}

// String renders e as the nft command that adds it, the element written as
// `nft list table inet berth-portmap` prints it (the comment goes with the
// key, before a map's value):
//
//	add element inet berth-portmap any4 { tcp . 8080 comment "berth id=c1 if=eth0 net=n1" : 10.88.0.5 . 80 }
func (e Elem) String() string {
	s := e.KeyText()
	if e.Comment != "" {
		s += ` comment "` + e.Comment + `"`
	}
	if e.IsMap() {
		s += " : " + TargetText(e.Target)
	}
	return fmt.Sprintf("add element inet %s %s { %s }", NFTTable, e.Set(), s)
}

// Describe renders e's key for berth's messages, as they have always read:
// KeyText, but a hairpin source as the range it is,
// "10.88.0.0-10.88.255.255 . 10.88.0.5".
func (e Elem) Describe() string {
	if e.Kind == SetHairpin {
		return fmt.Sprintf("%s-%s . %s", e.Src.Masked().Addr(), cidr.Last(e.Src), e.Target.Addr())
	}
	return e.KeyText()
}

// PlanNFT computes the elements an ADD puts in table inet berth-portmap
// for a, in the table's set order (and, within a set, in a's mapping
// order), each key once. Every element carries a comment naming its
// holder, for people reading `nft list table inet berth-portmap`.
func PlanNFT(a Attachment) []Elem {
	var out []Elem
	add := func(e Elem) {
		if !slices.ContainsFunc(out, func(o Elem) bool { return o.Key() == e.Key() }) {
			out = append(out, e)
		}
	}
	comment := holderComment(a)
	for _, v6 := range []bool{false, true} {
		t, ok := a.Target(v6)
		if !ok {
			continue
		}
		used := false
		for _, m := range a.Mappings {
			if v4, v6ok := m.Families(); (v6 && !v6ok) || (!v6 && !v4) {
				continue
			}
			used = true
			to := netip.AddrPortFrom(t.Addr(), m.ContainerPort)
			if wildcard(m.Key) {
				add(Elem{Kind: SetAny, Proto: m.Proto, HostPort: m.Port, Target: to, Comment: comment})
			} else {
				add(Elem{Kind: SetAddr, Proto: m.Proto, HostAddr: m.Addr, HostPort: m.Port, Target: to, Comment: comment})
			}
			if a.MasqAll {
				add(Elem{Kind: SetMasqAll, Proto: m.Proto, Target: to, Comment: comment})
			}
		}
		if !used || !a.SNAT {
			continue
		}
		// Hairpin: a neighbour on the container's subnet (or the
		// container itself) reaching it through the host's address.
		// Localhost: 127.0.0.0/8 reaching it via route_localnet.
		srcs := []netip.Prefix{t.Masked()}
		if !v6 {
			srcs = append(srcs, netip.MustParsePrefix("127.0.0.0/8"))
		}
		for _, s := range srcs {
			add(Elem{Kind: SetHairpin, Src: s, Target: netip.AddrPortFrom(t.Addr(), 0), Comment: comment})
		}
	}
	slices.SortStableFunc(out, func(x, y Elem) int { return cmp.Compare(setOrder(x.Set()), setOrder(y.Set())) })
	return out
}

func holderComment(a Attachment) string {
	c := fmt.Sprintf("berth id=%s if=%s net=%s", a.Owner.ContainerID, a.Owner.IfName, a.Owner.Network)
	if len(c) > 200 {
		c = c[:200]
	}
	return c
}
