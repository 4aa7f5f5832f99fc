package nat

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
	nftTable = "berth-nat"   // table inet berth-nat
	nftChain = "postrouting" // type nat hook postrouting priority srcnat
)

// nftNames are one network's set names: a fixed prefix and netHash.
type nftNames struct {
	Src, Dst [2]string // per family: container addresses, container subnets
}

func namesFor(network string) nftNames {
	h := netHash(network)
	return nftNames{
		Src: [2]string{"src4-" + h, "src6-" + h},
		Dst: [2]string{"dst4-" + h, "dst6-" + h},
	}
}

// ours reports whether set is one of the network's sets.
func (n nftNames) ours(set string) bool {
	return slices.Contains(n.Src[:], set) || slices.Contains(n.Dst[:], set)
}

// nftRule is a rule of the berth chain as read back: its handle and tag.
type nftRule struct {
	Handle uint64
	Tag    tag // zero Tag.Network when the comment was not a berth network tag
}

// nftState is what the kernel holds for one network, as read under the lock.
type nftState struct {
	Table, Chain bool
	Sets         []string       // every set in the table
	Src          []entry        // the network's container addresses (both families)
	Foreign      []netip.Addr   // address set elements without a berth owner comment
	Dst          [2][]addrRange // contents of the network's subnet sets
	Rules        []nftRule      // every rule of the chain
}

// netRule returns the handle of network's rule for family f, or 0.
func (st nftState) netRule(network string, f family) uint64 {
	for _, r := range st.Rules {
		if r.Tag.Network == storedNetwork(network) && r.Tag.Family == f.String() {
			return r.Handle
		}
	}
	return 0
}

// famOps is what one transaction does to one family of one network.
type famOps struct {
	AddSrc, AddDst bool    // create the sets
	DelElems       []entry // remove from the address set
	AddElems       []entry // add to the address set (with owner comments)
	WriteDst       bool    // flush the subnet set and write Dst
	Dst            []addrRange
	AddRule        bool
	DelRule        uint64 // handle of a rule to delete, or 0
	DelSrc, DelDst bool   // delete the sets (after the rule)
}

func (o famOps) empty() bool {
	return !o.AddSrc && !o.AddDst && len(o.DelElems) == 0 && len(o.AddElems) == 0 &&
		!o.WriteDst && !o.AddRule && o.DelRule == 0 && !o.DelSrc && !o.DelDst
}

// nftOps is one nftables transaction.
type nftOps struct {
	AddBase   bool // add table inet berth-nat and its postrouting chain
	DropTable bool // delete the table: nothing of any network is left
	Fam       [2]famOps
}

func (o nftOps) empty() bool {
	return !o.AddBase && !o.DropTable && o.Fam[v4].empty() && o.Fam[v6].empty()
}

// planNFT turns a change of network's entries into one transaction. A
// family with entries has its two sets and one rule; a family without has
// none; a table without any network is deleted.
func planNFT(network string, st nftState, c change) (nftOps, error) {
	names := namesFor(network)
	for _, r := range st.Rules {
		if r.Tag.Network != "" && r.Tag.Network != storedNetwork(network) && netHash(r.Tag.Network) == netHash(network) {
			return nftOps{}, fmt.Errorf("nftables: networks %q and %q hash to the same set names", network, r.Tag.Network)
		}
	}
	var ops nftOps
	active := false
	for _, f := range families {
		fo := &ops.Fam[f]
		final := ofFamily(c.Final, f)
		hasSrc, hasDst := slices.Contains(st.Sets, names.Src[f]), slices.Contains(st.Sets, names.Dst[f])
		rule := st.netRule(network, f)
		if len(final) == 0 {
			fo.DelRule = rule
			fo.DelSrc, fo.DelDst = hasSrc, hasDst
			continue
		}
		active = true
		fo.AddSrc, fo.AddDst = !hasSrc, !hasDst
		fo.DelElems = ofFamily(c.Del, f)
		fo.AddElems = ofFamily(c.Add, f)
		for _, a := range fo.AddElems {
			// An element's comment is only written when the element is
			// created: replace an unattributed one at the same address.
			if slices.Contains(st.Foreign, a.Addr.Addr()) {
				fo.DelElems = append(fo.DelElems, entry{Addr: netip.PrefixFrom(a.Addr.Addr(), a.Addr.Addr().BitLen())})
			}
		}
		want := ranges(subnets(final, f))
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
		slices.ContainsFunc(st.Rules, func(r nftRule) bool { return r.Tag.Network != storedNetwork(network) })
	if st.Table && !others {
		return nftOps{DropTable: true}, nil
	}
	return ops, nil
}

// checkNFT names the first part of want (one owner's entries) missing from st.
func checkNFT(network string, st nftState, want []entry) error {
	if len(want) == 0 {
		return nil
	}
	if !st.Table || !st.Chain {
		return fmt.Errorf("nftables: chain inet %s %s is missing", nftTable, nftChain)
	}
	names := namesFor(network)
	for _, f := range families {
		fw := ofFamily(want, f)
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
		for _, p := range subnets(fw, f) {
			if !slices.ContainsFunc(st.Dst[f], func(r addrRange) bool {
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

// intervalElem is an element of an interval set: a key and whether it ends
// a range (its key is then the first address after the range).
type intervalElem struct {
	Key []byte
	End bool
}

// rangeElems encodes ranges as the kernel's interval set wants them: a start
// element, then an end element holding the next address, left out when the
// range reaches the top of the address space.
func rangeElems(rs []addrRange) []intervalElem {
	var out []intervalElem
	for _, r := range rs {
		out = append(out, intervalElem{Key: r.From.AsSlice()})
		if next := r.To.Next(); next.IsValid() {
			out = append(out, intervalElem{Key: next.AsSlice(), End: true})
		}
	}
	return out
}

// elemRanges decodes an interval set's elements (in any order, as a dump
// returns them) back into ranges. Keys must all be addrLen bytes.
func elemRanges(elems []intervalElem, addrLen int) ([]addrRange, error) {
	elems = slices.Clone(elems)
	sort.SliceStable(elems, func(i, j int) bool { return bytes.Compare(elems[i].Key, elems[j].Key) < 0 })
	var out []addrRange
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
			out = append(out, addrRange{From: *open, To: a.Prev()})
			open = nil
		case e.End && open == nil:
			// An end with no start before it matches nothing; old nft
			// versions write one at the zero address.
		default:
			return nil, errors.New("interval elements do not pair as start and end")
		}
	}
	if open != nil {
		out = append(out, addrRange{From: *open, To: maxAddr(addrLen)})
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
