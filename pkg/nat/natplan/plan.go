// Package natplan is the pure part of package nat: the tags berth writes
// into kernel comments and reads back, the kernel names derived from a
// network name, and the plans that turn a change of a network's masqueraded
// addresses into one nftables transaction or one iptables-restore payload.
// It is pure: plain values in and out, no netlink, nftables or programs.
// Package nat reads the kernel into these values (NFTState, IPTState) and
// converts the plans (NFTOps, IPTOps) into google/nftables calls and
// iptables-restore input at its edge.
package natplan

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/owner"
)

// Entry is one masqueraded address as stored in the kernel: a set element
// (nftables) or a POSTROUTING rule (iptables). Owner is in stored form.
type Entry struct {
	Owner owner.Owner
	Addr  netip.Prefix // the container's address with its subnet length
}

func (e Entry) String() string {
	return fmt.Sprintf("%s (%s/%s)", e.Addr, e.Owner.ContainerID, e.Owner.IfName)
}

// sameOwner compares the parts of an owner a tag stores; the network is
// implied by where the entry was found.
func sameOwner(a, b owner.Owner) bool {
	return a.ContainerID == b.ContainerID && a.IfName == b.IfName
}

// Change is what one Ensure or Delete does to a network's entries, as
// PlanEnsure and PlanDelete compute it.
type Change struct {
	Add   []Entry // entries to write
	Del   []Entry // entries to remove (as found in the kernel)
	Final []Entry // the network's entries afterwards, sorted
}

// empty reports whether the change writes nothing.
func (c Change) empty() bool { return len(c.Add) == 0 && len(c.Del) == 0 }

// PlanEnsure makes the owner of want hold exactly want's addresses in cur, a
// network's entries. An address held by another owner moves to want's owner
// (IPAM gave it out again, so the old holder is gone); an entry of the same
// owner with another subnet length is rewritten; a duplicate is removed.
func PlanEnsure(cur, want []Entry, own owner.Owner) Change {
	del := make([]bool, len(cur))
	var add []Entry
	for _, w := range want {
		found := false
		for i, e := range cur {
			if e.Addr.Addr() != w.Addr.Addr() {
				continue
			}
			if !found && sameOwner(e.Owner, w.Owner) && e.Addr.Bits() == w.Addr.Bits() {
				found = true
				continue
			}
			del[i] = true
		}
		if !found {
			add = append(add, w)
		}
	}
	for i, e := range cur {
		if sameOwner(e.Owner, own) && !slices.ContainsFunc(want, func(w Entry) bool { return w.Addr.Addr() == e.Addr.Addr() }) {
			del[i] = true
		}
	}
	return makeChange(cur, del, add)
}

// PlanDelete removes every entry of owner from cur.
func PlanDelete(cur []Entry, own owner.Owner) Change {
	del := make([]bool, len(cur))
	for i, e := range cur {
		del[i] = sameOwner(e.Owner, own)
	}
	return makeChange(cur, del, nil)
}

func makeChange(cur []Entry, del []bool, add []Entry) Change {
	c := Change{Add: add}
	for i, e := range cur {
		if del[i] {
			c.Del = append(c.Del, e)
		} else {
			c.Final = append(c.Final, e)
		}
	}
	c.Final = append(c.Final, add...)
	SortEntries(c.Final)
	return c
}

// SortEntries sorts es by container ID, interface name and address.
func SortEntries(es []Entry) {
	slices.SortFunc(es, func(a, b Entry) int {
		return cmp.Or(
			cmp.Compare(a.Owner.ContainerID, b.Owner.ContainerID),
			cmp.Compare(a.Owner.IfName, b.Owner.IfName),
			a.Addr.Addr().Compare(b.Addr.Addr()),
		)
	})
}

// missing names the first entry of want absent from cur, or "".
func missing(cur, want []Entry) string {
	for _, w := range want {
		if !slices.ContainsFunc(cur, func(e Entry) bool {
			return e.Addr == w.Addr && sameOwner(e.Owner, w.Owner)
		}) {
			return w.String()
		}
	}
	return ""
}

// Family selects the IPv4 or the IPv6 half of a network's state.
type Family int

const (
	V4 Family = iota
	V6
)

// Families are both families, in the order every backend handles them.
var Families = [...]Family{V4, V6}

// String is the family as nft names it, and as a tag's fam= stores it.
func (f Family) String() string {
	if f == V6 {
		return "ip6"
	}
	return "ip"
}

// Has reports whether p is in family f.
func (f Family) Has(p netip.Prefix) bool { return p.Addr().Is6() == (f == V6) }

// multicast is the destination range never masqueraded.
func (f Family) multicast() netip.Prefix {
	if f == V6 {
		return netip.MustParsePrefix("ff00::/8")
	}
	return netip.MustParsePrefix("224.0.0.0/4")
}

// OfFamily returns the entries of es in family f.
func OfFamily(es []Entry, f Family) []Entry {
	var out []Entry
	for _, e := range es {
		if f.Has(e.Addr) {
			out = append(out, e)
		}
	}
	return out
}

// Subnets returns the container subnets of es in family f: masked, sorted,
// and without those inside another (their traffic is excluded already).
func Subnets(es []Entry, f Family) []netip.Prefix {
	var ps []netip.Prefix
	for _, e := range OfFamily(es, f) {
		ps = append(ps, e.Addr.Masked())
	}
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	var out []netip.Prefix
	for _, p := range ps {
		// Sorted by address then length, a prefix covering p comes first
		// and is the last one kept.
		if n := len(out); n > 0 && out[n-1].Bits() <= p.Bits() && out[n-1].Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// AddrRange is an inclusive range of addresses, as an nftables interval set
// holds it.
type AddrRange struct{ From, To netip.Addr }

// ranges merges prefixes (sorted, as Subnets returns them) into disjoint,
// non-adjacent ranges: an nftables interval set rejects overlaps, and two
// adjacent ranges would need one key as both an end and a start.
func ranges(ps []netip.Prefix) []AddrRange {
	var out []AddrRange
	for _, p := range ps {
		r := AddrRange{From: p.Masked().Addr(), To: cidr.Last(p)}
		if n := len(out); n > 0 {
			last := &out[n-1]
			if next := last.To.Next(); !next.IsValid() || r.From.Compare(next) <= 0 {
				if r.To.Compare(last.To) > 0 {
					last.To = r.To
				}
				continue
			}
		}
		out = append(out, r)
	}
	return out
}
