package nat

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/owner"
)

// entry is one masqueraded address as stored in the kernel: a set element
// (nftables) or a POSTROUTING rule (iptables). Owner is in stored form.
type entry struct {
	Owner owner.Owner
	Addr  netip.Prefix // the container's address with its subnet length
}

func (e entry) String() string {
	return fmt.Sprintf("%s (%s/%s)", e.Addr, e.Owner.ContainerID, e.Owner.IfName)
}

// sameOwner compares the parts of an owner a tag stores; the network is
// implied by where the entry was found.
func sameOwner(a, b owner.Owner) bool {
	return a.ContainerID == b.ContainerID && a.IfName == b.IfName
}

// change is what one Ensure or Delete does to a network's entries.
type change struct {
	Add   []entry // entries to write
	Del   []entry // entries to remove (as found in the kernel)
	Final []entry // the network's entries afterwards, sorted
}

// empty reports whether the change writes nothing.
func (c change) empty() bool { return len(c.Add) == 0 && len(c.Del) == 0 }

// planEnsure makes the owner of want hold exactly want's addresses in cur, a
// network's entries. An address held by another owner moves to want's owner
// (IPAM gave it out again, so the old holder is gone); an entry of the same
// owner with another subnet length is rewritten; a duplicate is removed.
func planEnsure(cur, want []entry, own owner.Owner) change {
	del := make([]bool, len(cur))
	var add []entry
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
		if sameOwner(e.Owner, own) && !slices.ContainsFunc(want, func(w entry) bool { return w.Addr.Addr() == e.Addr.Addr() }) {
			del[i] = true
		}
	}
	return makeChange(cur, del, add)
}

// planDelete removes every entry of owner from cur.
func planDelete(cur []entry, own owner.Owner) change {
	del := make([]bool, len(cur))
	for i, e := range cur {
		del[i] = sameOwner(e.Owner, own)
	}
	return makeChange(cur, del, nil)
}

func makeChange(cur []entry, del []bool, add []entry) change {
	c := change{Add: add}
	for i, e := range cur {
		if del[i] {
			c.Del = append(c.Del, e)
		} else {
			c.Final = append(c.Final, e)
		}
	}
	c.Final = append(c.Final, add...)
	sortEntries(c.Final)
	return c
}

func sortEntries(es []entry) {
	slices.SortFunc(es, func(a, b entry) int {
		return cmp.Or(
			cmp.Compare(a.Owner.ContainerID, b.Owner.ContainerID),
			cmp.Compare(a.Owner.IfName, b.Owner.IfName),
			a.Addr.Addr().Compare(b.Addr.Addr()),
		)
	})
}

// missing names the first entry of want absent from cur, or "".
func missing(cur, want []entry) string {
	for _, w := range want {
		if !slices.ContainsFunc(cur, func(e entry) bool {
			return e.Addr == w.Addr && sameOwner(e.Owner, w.Owner)
		}) {
			return w.String()
		}
	}
	return ""
}

// group turns a network's entries into one Masq per owner, sorted.
func group(network string, es []entry) []Masq {
	es = slices.Clone(es)
	sortEntries(es)
	var out []Masq
	for _, e := range es {
		o := owner.Owner{Network: network, ContainerID: e.Owner.ContainerID, IfName: e.Owner.IfName}
		if n := len(out); n > 0 && out[n-1].Owner == o {
			out[n-1].Addrs = append(out[n-1].Addrs, e.Addr)
			continue
		}
		out = append(out, Masq{Owner: o, Addrs: []netip.Prefix{e.Addr}})
	}
	return out
}

// family selects the IPv4 or the IPv6 half of a network's state.
type family int

const (
	v4 family = iota
	v6
)

var families = [...]family{v4, v6}

func (f family) String() string {
	if f == v6 {
		return "ip6"
	}
	return "ip"
}

func (f family) has(p netip.Prefix) bool { return p.Addr().Is6() == (f == v6) }

// multicast is the destination range never masqueraded.
func (f family) multicast() netip.Prefix {
	if f == v6 {
		return netip.MustParsePrefix("ff00::/8")
	}
	return netip.MustParsePrefix("224.0.0.0/4")
}

// ofFamily returns the entries of es in family f.
func ofFamily(es []entry, f family) []entry {
	var out []entry
	for _, e := range es {
		if f.has(e.Addr) {
			out = append(out, e)
		}
	}
	return out
}

// subnets returns the container subnets of es in family f: masked, sorted,
// and without those inside another (their traffic is excluded already).
func subnets(es []entry, f family) []netip.Prefix {
	var ps []netip.Prefix
	for _, e := range ofFamily(es, f) {
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

// addrRange is an inclusive range of addresses, as an nftables interval set
// holds it.
type addrRange struct{ From, To netip.Addr }

// ranges merges prefixes (sorted, as subnets returns them) into disjoint,
// non-adjacent ranges: an nftables interval set rejects overlaps, and two
// adjacent ranges would need one key as both an end and a start.
func ranges(ps []netip.Prefix) []addrRange {
	var out []addrRange
	for _, p := range ps {
		r := addrRange{From: p.Masked().Addr(), To: cidr.Last(p)}
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
