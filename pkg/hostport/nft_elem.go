package hostport

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"

	"github.com/berth-cni/berth/pkg/cidr"
)

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

var setKinds = [...]SetKind{SetAny, SetAddr, SetHairpin, SetMasqAll}

// setNames are the table's sets in the order it declares them: the IPv4
// family's four, then the IPv6 family's.
var setNames = func() []string {
	var out []string
	for _, sfx := range []string{"4", "6"} {
		for _, k := range setKinds {
			out = append(out, string(k)+sfx)
		}
	}
	return out
}()

// setOrder is the position of a set in setNames.
func setOrder(set string) int { return slices.Index(setNames, set) }

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

// key is e reduced to what identifies it in its set: no comment, and in a
// map no target. Two elements with one key cannot both be in a set.
func (e Elem) key() Elem {
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

// keyText renders e's key in nft's syntax: "tcp . 8080",
// "10.0.0.1 . udp . 53", "10.88.0.0/16 . 10.88.0.5", "10.88.0.5 . tcp . 80".
func (e Elem) keyText() string {
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

// targetText renders a map's value: "10.88.0.5 . 80".
func targetText(t netip.AddrPort) string {
	return t.Addr().String() + " . " + strconv.Itoa(int(t.Port()))
}

// String renders e as the nft command that adds it, the element written as
// `nft list table inet berth-portmap` prints it (the comment goes with the
// key, before a map's value):
//
//	add element inet berth-portmap any4 { tcp . 8080 comment "berth id=c1 if=eth0 net=n1" : 10.88.0.5 . 80 }
func (e Elem) String() string {
	s := e.keyText()
	if e.Comment != "" {
		s += ` comment "` + e.Comment + `"`
	}
	if e.IsMap() {
		s += " : " + targetText(e.Target)
	}
	return fmt.Sprintf("add element inet %s %s { %s }", NFTTable, e.Set(), s)
}

// describe renders e's key for berth's messages, as they have always read:
// keyText, but a hairpin source as the range it is,
// "10.88.0.0-10.88.255.255 . 10.88.0.5".
func (e Elem) describe() string {
	if e.Kind == SetHairpin {
		return fmt.Sprintf("%s-%s . %s", e.Src.Masked().Addr(), cidr.Last(e.Src), e.Target.Addr())
	}
	return e.keyText()
}

// PlanNFT computes the elements Add puts in table inet berth-portmap for
// a, in the table's set order (and, within a set, in a's mapping order),
// each key once. Every element carries a comment naming its holder, for
// people reading `nft list table inet berth-portmap`. It is pure.
func PlanNFT(a Attachment) []Elem {
	var out []Elem
	add := func(e Elem) {
		if !slices.ContainsFunc(out, func(o Elem) bool { return o.key() == e.key() }) {
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
