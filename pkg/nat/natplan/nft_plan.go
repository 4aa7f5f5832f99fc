package natplan

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/berth-cni/berth/pkg/cidr"
)

// nftables layout. Names are an API once released: never rename them.
const (
	NFTTable = "berth-nat"   // table inet berth-nat
	NFTChain = "postrouting" // type nat hook postrouting priority srcnat
)

// NFTNames are one network's set names: a fixed prefix and netHash.
type NFTNames struct {
	Src, Dst [2]string // per family: container addresses, container subnets
}

// NFTNamesFor returns network's set names.
func NFTNamesFor(network string) NFTNames {
	h := netHash(network)
	return NFTNames{
		Src: [2]string{"src4-" + h, "src6-" + h},
		Dst: [2]string{"dst4-" + h, "dst6-" + h},
	}
}

// ours reports whether set is one of the network's sets.
func (n NFTNames) ours(set string) bool {
	return slices.Contains(n.Src[:], set) || slices.Contains(n.Dst[:], set)
}

// NFTRule is a rule of the berth chain as read back: its handle and tag.
type NFTRule struct {
	Handle uint64
	Tag    Tag // zero Tag.Network when the comment was not a berth network tag
}

// NFTState is what the kernel holds for one network, as read under the lock.
type NFTState struct {
	Table, Chain bool
	Sets         []string       // every set in the table
	Src          []Entry        // the network's container addresses (both families)
	Foreign      []netip.Addr   // address set elements without a berth owner comment
	Dst          [2][]AddrRange // contents of the network's subnet sets
	Rules        []NFTRule      // every rule of the chain
}

// netRule returns the handle of network's rule for family f, or 0.
func (st NFTState) netRule(network string, f Family) uint64 {
	for _, r := range st.Rules {
		if r.Tag.Network == storedNetwork(network) && r.Tag.Family == f.String() {
			return r.Handle
		}
	}
	return 0
}

// FamOps is what one transaction does to one family of one network.
type FamOps struct {
	AddSrc, AddDst bool    // create the sets
	DelElems       []Entry // remove from the address set
	AddElems       []Entry // add to the address set (with owner comments)
	WriteDst       bool    // flush the subnet set and write Dst
	Dst            []AddrRange
	AddRule        bool
	DelRule        uint64 // handle of a rule to delete, or 0
	DelSrc, DelDst bool   // delete the sets (after the rule)
}

func (o FamOps) empty() bool {
	return !o.AddSrc && !o.AddDst && len(o.DelElems) == 0 && len(o.AddElems) == 0 &&
		!o.WriteDst && !o.AddRule && o.DelRule == 0 && !o.DelSrc && !o.DelDst
}

// NFTOps is one nftables transaction.
type NFTOps struct {
	AddBase   bool // add table inet berth-nat and its postrouting chain
	DropTable bool // delete the table: nothing of any network is left
	Fam       [2]FamOps
}

// Empty reports whether the transaction does nothing.
func (o NFTOps) Empty() bool {
	return !o.AddBase && !o.DropTable && o.Fam[V4].empty() && o.Fam[V6].empty()
}

// PlanNFT turns a change of network's entries into one transaction. A
// family with entries has its two sets and one rule; a family without has
// none; a table without any network is deleted.
func PlanNFT(network string, st NFTState, c Change) (NFTOps, error) {
	names := NFTNamesFor(network)
	for _, r := range st.Rules {
		if r.Tag.Network != "" && r.Tag.Network != storedNetwork(network) && netHash(r.Tag.Network) == netHash(network) {
			return NFTOps{}, fmt.Errorf("nftables: networks %q and %q hash to the same set names", network, r.Tag.Network)
		}
	}
	var ops NFTOps
	active := false
	for _, f := range Families {
		fo := &ops.Fam[f]
		final := OfFamily(c.Final, f)
		hasSrc, hasDst := slices.Contains(st.Sets, names.Src[f]), slices.Contains(st.Sets, names.Dst[f])
		rule := st.netRule(network, f)
		if len(final) == 0 {
			fo.DelRule = rule
			fo.DelSrc, fo.DelDst = hasSrc, hasDst
			continue
		}
		active = true
		fo.AddSrc, fo.AddDst = !hasSrc, !hasDst
		fo.DelElems = OfFamily(c.Del, f)
		fo.AddElems = OfFamily(c.Add, f)
		for _, a := range fo.AddElems {
			// An element's comment is only written when the element is
			// created: replace an unattributed one at the same address.
			if slices.Contains(st.Foreign, a.Addr.Addr()) {
				fo.DelElems = append(fo.DelElems, Entry{Addr: netip.PrefixFrom(a.Addr.Addr(), a.Addr.Addr().BitLen())})
			}
		}
		want := ranges(Subnets(final, f))
		if !hasDst || !slices.Equal(want, st.Dst[f]) {
			fo.WriteDst, fo.Dst = true, want
		}
		fo.AddRule = rule == 0
	}
	if active {
		ops.AddBase = !st.Table || !st.Chain
		return ops, nil
	}
	others := slices.ContainsFunc(st.Sets, func(s string) bool { return !names.ours(s) }) ||
		slices.ContainsFunc(st.Rules, func(r NFTRule) bool { return r.Tag.Network != storedNetwork(network) })
	if st.Table && !others {
		return NFTOps{DropTable: true}, nil
	}
	return ops, nil
}

// CheckNFT names the first part of want (one owner's entries) missing from st.
func CheckNFT(network string, st NFTState, want []Entry) error {
	if len(want) == 0 {
		return nil
	}
	if !st.Table || !st.Chain {
		return fmt.Errorf("nftables: chain inet %s %s is missing", NFTTable, NFTChain)
	}
	names := NFTNamesFor(network)
	for _, f := range Families {
		fw := OfFamily(want, f)
		if len(fw) == 0 {
			continue
		}
		for _, set := range []string{names.Src[f], names.Dst[f]} {
			if !slices.Contains(st.Sets, set) {
				return fmt.Errorf("nftables: set %s of network %q is missing", set, network)
			}
		}
		if m := missing(st.Src, fw); m != "" {
			return fmt.Errorf("nftables: element %s of set %s is missing", m, names.Src[f])
		}
		for _, p := range Subnets(fw, f) {
			if !slices.ContainsFunc(st.Dst[f], func(r AddrRange) bool {
				return r.From.Compare(p.Addr()) <= 0 && r.To.Compare(cidr.Last(p)) >= 0
			}) {
				return fmt.Errorf("nftables: subnet %s is missing from set %s", p, names.Dst[f])
			}
		}
		if st.netRule(network, f) == 0 {
			return fmt.Errorf("nftables: %s masquerade rule of network %q is missing", f, network)
		}
	}
	return nil
}

// Covered reports whether one of rs holds all of p.
func Covered(rs []AddrRange, p netip.Prefix) bool {
	first, last := p.Masked().Addr(), cidr.Last(p)
	for _, r := range rs {
		if r.From.Compare(first) <= 0 && r.To.Compare(last) >= 0 {
			return true
		}
	}
	return false
}

// IntervalElem is an element of an interval set: a key and whether it ends
// a range (its key is then the first address after the range).
type IntervalElem struct {
	Key []byte
	End bool
}

// RangeElems encodes ranges as the kernel's interval set wants them: a start
// element, then an end element holding the next address, left out when the
// range reaches the top of the address space.
func RangeElems(rs []AddrRange) []IntervalElem {
	var out []IntervalElem
	for _, r := range rs {
		out = append(out, IntervalElem{Key: r.From.AsSlice()})
		if next := r.To.Next(); next.IsValid() {
			out = append(out, IntervalElem{Key: next.AsSlice(), End: true})
		}
	}
	return out
}

// ElemRanges decodes an interval set's elements (in any order, as a dump
// returns them) back into ranges. Keys must all be addrLen bytes.
func ElemRanges(elems []IntervalElem, addrLen int) ([]AddrRange, error) {
	elems = slices.Clone(elems)
	sort.SliceStable(elems, func(i, j int) bool { return bytes.Compare(elems[i].Key, elems[j].Key) < 0 })
	var out []AddrRange
	var open *netip.Addr
	for _, e := range elems {
		if len(e.Key) != addrLen {
			return nil, fmt.Errorf("interval key of %d bytes, want %d", len(e.Key), addrLen)
		}
		a, _ := netip.AddrFromSlice(e.Key)
		switch {
		case !e.End && open == nil:
			open = &a
		case e.End && open != nil && a.Compare(*open) > 0:
			out = append(out, AddrRange{From: *open, To: a.Prev()})
			open = nil
		case e.End && open == nil:
			// An end with no start before it matches nothing; old nft
			// versions write one at the zero address.
		default:
			return nil, errors.New("interval elements do not pair as start and end")
		}
	}
	if open != nil {
		out = append(out, AddrRange{From: *open, To: maxAddr(addrLen)})
	}
	return out, nil
}

// maxAddr is the highest address of addrLen bytes.
func maxAddr(addrLen int) netip.Addr {
	if addrLen == 16 {
		return cidr.Last(netip.PrefixFrom(netip.IPv6Unspecified(), 0))
	}
	return cidr.Last(netip.PrefixFrom(netip.IPv4Unspecified(), 0))
}
