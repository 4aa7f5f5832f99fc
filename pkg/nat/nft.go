package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/nat/natplan"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// nftBackend programs table inet berth-nat over netlink, in-process, in ns.
type nftBackend struct{ ns *netns.NS }

// Ensure makes m's addresses masqueraded: one netlink transaction adding
// the table, chain, the network's sets and rule where missing, m's elements
// and the recomputed subnet set.
//
// Equivalent: nft -f - <<< 'add table inet berth-nat; add chain …;
// add element inet berth-nat src4-$h { 10.22.0.5 comment "berth p=16 if=eth0 id=$id" }; …'
func (b nftBackend) Ensure(m Masq) error {
	want, err := validateMasq(m)
	if err != nil {
		return err
	}
	own := StoredOwner(m.Owner)
	return withLock(func() error {
		return b.change(m.Owner.Network, func(cur []natplan.Entry) natplan.Change { return natplan.PlanEnsure(cur, want, own) })
	})
}

// Add writes m's address elements in one transaction without reading the
// address sets: each address is looked up alone (one netlink request, not
// a dump), and only the missing ones are added, with m's owner comment.
// Only the subnet set is read (it holds a range per distinct subnet, not
// per container). When the network's sets are not there yet, m's subnet is
// not in the subnet set, or an address is held under another owner (a gone
// container's, whose DEL never ran), Ensure's read-plan-write path runs
// instead: it moves the address to m's owner. (Replacing an element in the
// batch, delete then add, would cost every ADD the commit of an element
// deletion, which waits for the kernel's RCU grace period: see
// bench/README.md.)
//
// Equivalent: nft list set inet berth-nat dst4-$h; nft get element inet berth-nat src4-$h { 10.22.0.5 };
// nft add element inet berth-nat src4-$h { 10.22.0.5 comment "berth p=16 if=eth0 id=$id" }
func (b nftBackend) Add(m Masq) error {
	want, err := validateMasq(m)
	if err != nil {
		return err
	}
	own := StoredOwner(m.Owner)
	return withLock(func() error {
		done := false
		err := b.ns.WithNFT(func(c *nftables.Conn) (err error) {
			done, err = b.addFast(c, m.Owner.Network, want)
			return err
		})
		if err != nil || done {
			return err
		}
		return b.change(m.Owner.Network, func(cur []natplan.Entry) natplan.Change { return natplan.PlanEnsure(cur, want, own) })
	})
}

// addFast sends Add's batch and reports done, or sends nothing and
// reports not done when its one batch cannot extend the state: the
// network's subnet set cannot be read (it is not there yet) or lacks one
// of want's subnets, or an address is held under another comment.
func (b nftBackend) addFast(c *nftables.Conn, network string, want []natplan.Entry) (done bool, err error) {
	conn, err := b.ns.Netfilter()
	if err != nil {
		return false, err
	}
	defer conn.Close()
	queued := false
	for _, f := range natplan.Families {
		es := natplan.OfFamily(want, f)
		if len(es) == 0 {
			continue
		}
		src, dst := nftSets(network, f)
		// google/nftables does not wrap the errno of a missing set, so
		// any failed read of it is taken for one.
		have, err := readDst(c, dst.Name, f)
		if err != nil {
			return false, nil
		}
		for _, p := range natplan.Subnets(es, f) {
			if !natplan.Covered(have, p) {
				return false, nil
			}
		}
		var missing []natplan.Entry
		for _, e := range es {
			comment, found, err := getElem(conn, src.Name, e.Addr.Addr().AsSlice())
			switch {
			case err != nil:
				return false, err
			case !found:
				missing = append(missing, e)
			case comment != natplan.OwnerTag("", e).String():
				return false, nil
			}
		}
		if len(missing) > 0 {
			if err := c.SetAddElements(src, srcElems(network, missing)); err != nil {
				return false, err
			}
			queued = true
		}
	}
	if !queued {
		return true, nil
	}
	return true, c.Flush()
}

// Delete removes o's elements, and the network's sets and rules or the
// whole table when nothing else is left, in one transaction.
//
// Equivalent: nft delete element inet berth-nat src4-$h { 10.22.0.5 }; …
func (b nftBackend) Delete(o owner.Owner) error { return b.DeleteAfter(o, nil) }

// DeleteAfter is Delete with the netlink socket's close put off until
// linkGone is closed (nil: at once). Closing a NETLINK_NETFILTER socket
// makes the kernel flush the namespace's pending nf_tables destroy work,
// and after a commit that deleted an element that work is waiting out an
// RCU grace period; the close waits for it holding the namespace's
// nf_tables commit mutex, which the unregistration of a link in the same
// namespace takes too (its netdev event). So closed while the caller's
// RTM_DELLINK of the host veth runs, the socket stalls that deletion by up
// to a grace period; closed after it, the destroy work is long done and
// the close returns at once (bench/README.md has the figures). The
// commit, and the NAT lock, are not held back.
func (b nftBackend) DeleteAfter(o owner.Owner, linkGone <-chan struct{}) error {
	if err := validateOwner(o); err != nil {
		return err
	}
	own := StoredOwner(o)
	c, err := b.ns.NFT()
	if err != nil {
		return err
	}
	err = withLock(func() error {
		return changeNFT(c, o.Network, func(cur []natplan.Entry) natplan.Change { return natplan.PlanDelete(cur, own) })
	})
	if linkGone != nil {
		<-linkGone
	}
	if cerr := c.CloseLasting(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("nftables: close netlink: %w", cerr))
	}
	return err
}

// List reads network's address sets. Reads take the lock too: a netlink
// dump that a concurrent write interrupts is not reported as such by
// google/nftables, so only a snapshot no berth writer can cut is trusted.
//
// Equivalent: nft list set inet berth-nat src4-$h; nft list set inet berth-nat src6-$h
func (b nftBackend) List(network string) ([]Masq, error) {
	if network == "" {
		return nil, errors.New("nftables: list needs a network name")
	}
	var out []Masq
	err := withLock(func() error {
		return b.ns.WithNFT(func(c *nftables.Conn) error {
			st, err := readNFT(c, network)
			out = group(network, st.Src)
			return err
		})
	})
	return out, err
}

// Check compares m with the network's sets and rules.
//
// Equivalent: nft list table inet berth-nat
func (b nftBackend) Check(m Masq) error {
	want, err := validateMasq(m)
	if err != nil {
		return err
	}
	return withLock(func() error {
		return b.ns.WithNFT(func(c *nftables.Conn) error {
			st, err := readNFT(c, m.Owner.Network)
			if err != nil {
				return err
			}
			return natplan.CheckNFT(m.Owner.Network, st, want)
		})
	})
}

// change reads network's state, plans, and applies the plan as one
// transaction; the caller holds the lock.
func (b nftBackend) change(network string, plan func(cur []natplan.Entry) natplan.Change) error {
	return b.ns.WithNFT(func(c *nftables.Conn) error { return changeNFT(c, network, plan) })
}

// changeNFT is change over an open connection.
func changeNFT(c *nftables.Conn, network string, plan func(cur []natplan.Entry) natplan.Change) error {
	st, err := readNFT(c, network)
	if err != nil {
		return err
	}
	ops, err := natplan.PlanNFT(network, st, plan(st.Src))
	if err != nil || ops.Empty() {
		return err
	}
	if err := applyNFT(c, network, ops); err != nil {
		return fmt.Errorf("nftables: update network %q in table inet %s: %w", network, natplan.NFTTable, err)
	}
	return nil
}

var natTable = &nftables.Table{Name: natplan.NFTTable, Family: nftables.TableFamilyINet}

// readNFT reads network's part of table inet berth-nat.
func readNFT(c *nftables.Conn, network string) (st natplan.NFTState, err error) {
	// google/nftables decodes element comments with a TLV reader that
	// panics on malformed kernel data; report that as an error instead.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("nftables: decode table inet %s: %v", natplan.NFTTable, r)
		}
	}()
	return readNFTState(c, network)
}

func readNFTState(c *nftables.Conn, network string) (natplan.NFTState, error) {
	var st natplan.NFTState
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
	if err != nil {
		return st, fmt.Errorf("nftables: list tables: %w", err)
	}
	if !slices.ContainsFunc(tables, func(t *nftables.Table) bool { return t.Name == natplan.NFTTable }) {
		return st, nil
	}
	st.Table = true
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return st, fmt.Errorf("nftables: list chains: %w", err)
	}
	st.Chain = slices.ContainsFunc(chains, func(ch *nftables.Chain) bool {
		return ch.Table.Name == natplan.NFTTable && ch.Name == natplan.NFTChain
	})
	sets, err := c.GetSets(natTable)
	if err != nil {
		return st, fmt.Errorf("nftables: list sets of table inet %s: %w", natplan.NFTTable, err)
	}
	for _, s := range sets {
		st.Sets = append(st.Sets, s.Name)
	}
	names := natplan.NFTNamesFor(network)
	for _, f := range natplan.Families {
		var elems []nftables.SetElement
		if slices.Contains(st.Sets, names.Src[f]) {
			if elems, err = c.GetSetElements(&nftables.Set{Table: natTable, Name: names.Src[f]}); err != nil {
				return st, fmt.Errorf("nftables: list set %s: %w", names.Src[f], err)
			}
			es, foreign := srcEntries(network, elems)
			st.Src = append(st.Src, es...)
			st.Foreign = append(st.Foreign, foreign...)
		}
		if slices.Contains(st.Sets, names.Dst[f]) {
			if st.Dst[f], err = readDst(c, names.Dst[f], f); err != nil {
				return st, err
			}
		}
	}
	natplan.SortEntries(st.Src)
	if !st.Chain {
		return st, nil
	}
	rules, err := c.GetRules(natTable, &nftables.Chain{Name: natplan.NFTChain, Table: natTable})
	if err != nil {
		return st, fmt.Errorf("nftables: list chain %s: %w", natplan.NFTChain, err)
	}
	for _, r := range rules {
		nr := natplan.NFTRule{Handle: r.Handle, Tag: natplan.Tag{Bits: -1}}
		if s, ok := ruleComment(r.UserData); ok {
			if t, err := natplan.ParseTag(s); err == nil && t.Network != "" {
				nr.Tag = t
			}
		}
		st.Rules = append(st.Rules, nr)
	}
	return st, nil
}

// srcEntries decodes an address set's elements. Elements without a berth
// owner comment cannot be attributed; their addresses are returned apart so
// that an Ensure of the same address replaces them.
func srcEntries(network string, elems []nftables.SetElement) (es []natplan.Entry, foreign []netip.Addr) {
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok {
			continue
		}
		t, err := natplan.ParseTag(e.Comment)
		if err != nil || !t.HasOwner() || t.Network != "" || t.Bits > a.BitLen() {
			foreign = append(foreign, a)
			continue
		}
		es = append(es, natplan.Entry{
			Owner: owner.Owner{Network: network, ContainerID: t.ContainerID, IfName: t.IfName},
			Addr:  netip.PrefixFrom(a, t.Bits),
		})
	}
	return es, foreign
}

// ruleComment reads the comment (NFTNL_UDATA_RULE_COMMENT, a NUL-terminated
// string) from a rule's userdata TLVs, checking every length.
func ruleComment(ud []byte) (string, bool) {
	for len(ud) >= 2 {
		typ, n := ud[0], int(ud[1])
		if len(ud) < 2+n {
			return "", false
		}
		if typ == byte(userdata.TypeComment) {
			v := ud[2 : 2+n]
			if len(v) == 0 || v[len(v)-1] != 0 {
				return "", false
			}
			return string(v[:len(v)-1]), true
		}
		ud = ud[2+n:]
	}
	return "", false
}

// readDst reads the subnet set called name, of family f, as ranges.
//
// Equivalent: nft list set inet berth-nat dst4-$h
func readDst(c *nftables.Conn, name string, f natplan.Family) ([]natplan.AddrRange, error) {
	elems, err := c.GetSetElements(&nftables.Set{Table: natTable, Name: name})
	if err != nil {
		return nil, fmt.Errorf("nftables: list set %s: %w", name, err)
	}
	ies := make([]natplan.IntervalElem, len(elems))
	for i, e := range elems {
		ies[i] = natplan.IntervalElem{Key: e.Key, End: e.IntervalEnd}
	}
	rs, err := natplan.ElemRanges(ies, addrLen(f))
	if err != nil {
		return nil, fmt.Errorf("nftables: set %s: %w", name, err)
	}
	return rs, nil
}

func addrLen(f natplan.Family) int {
	if f == natplan.V6 {
		return 16
	}
	return 4
}

// nftSets returns the network's two sets of family f, as AddSet wants them.
func nftSets(network string, f natplan.Family) (src, dst *nftables.Set) {
	names := natplan.NFTNamesFor(network)
	key := nftables.TypeIPAddr
	if f == natplan.V6 {
		key = nftables.TypeIP6Addr
	}
	comment := natplan.NetworkTag(network, "").String()
	src = &nftables.Set{Table: natTable, Name: names.Src[f], KeyType: key,
		KeyByteOrder: binaryutil.BigEndian, Comment: comment}
	dst = &nftables.Set{Table: natTable, Name: names.Dst[f], KeyType: key, Interval: true,
		KeyByteOrder: binaryutil.BigEndian, Comment: comment}
	return src, dst
}

// applyNFT queues ops and sends them as one batch.
func applyNFT(c *nftables.Conn, network string, ops natplan.NFTOps) error {
	if ops.DropTable {
		c.DelTable(natTable)
		return c.Flush()
	}
	chain := &nftables.Chain{Name: natplan.NFTChain, Table: natTable}
	if ops.AddBase {
		c.AddTable(natTable)
		accept := nftables.ChainPolicyAccept
		c.AddChain(&nftables.Chain{Name: natplan.NFTChain, Table: natTable, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	}
	for _, f := range natplan.Families {
		fo := ops.Fam[f]
		src, dst := nftSets(network, f)
		if fo.AddSrc {
			if err := c.AddSet(src, nil); err != nil {
				return fmt.Errorf("add set %s: %w", src.Name, err)
			}
		}
		if fo.AddDst {
			if err := c.AddSet(dst, nil); err != nil {
				return fmt.Errorf("add set %s: %w", dst.Name, err)
			}
		}
		if len(fo.DelElems) > 0 {
			if err := c.SetDeleteElements(src, srcElems("", fo.DelElems)); err != nil {
				return fmt.Errorf("delete elements of %s: %w", src.Name, err)
			}
		}
		if len(fo.AddElems) > 0 {
			if err := c.SetAddElements(src, srcElems(network, fo.AddElems)); err != nil {
				return fmt.Errorf("add elements to %s: %w", src.Name, err)
			}
		}
		if fo.WriteDst {
			c.FlushSet(dst)
			if err := c.SetAddElements(dst, dstElems(fo.Dst)); err != nil {
				return fmt.Errorf("add elements to %s: %w", dst.Name, err)
			}
		}
		if fo.AddRule {
			c.AddRule(masqRule(network, f, src, dst))
		}
		if fo.DelRule != 0 {
			if err := c.DelRule(&nftables.Rule{Table: natTable, Chain: chain, Handle: fo.DelRule}); err != nil {
				return fmt.Errorf("delete rule %d: %w", fo.DelRule, err)
			}
		}
		if fo.DelSrc {
			c.DelSet(src)
		}
		if fo.DelDst {
			c.DelSet(dst)
		}
	}
	return c.Flush()
}

// srcElems are address set elements; with a network name they carry their
// owner comment (deletion needs only the key).
func srcElems(network string, es []natplan.Entry) []nftables.SetElement {
	out := make([]nftables.SetElement, len(es))
	for i, e := range es {
		out[i].Key = e.Addr.Addr().AsSlice()
		if network != "" {
			out[i].Comment = natplan.OwnerTag("", e).String()
		}
	}
	return out
}

func dstElems(rs []natplan.AddrRange) []nftables.SetElement {
	var out []nftables.SetElement
	for _, ie := range natplan.RangeElems(rs) {
		out = append(out, nftables.SetElement{Key: ie.Key, IntervalEnd: ie.End})
	}
	return out
}

// masqRule is the network's one rule for family f:
//
//	ip saddr @src4-$h ip daddr != @dst4-$h ip daddr != 224.0.0.0/4 masquerade comment "berth net=$net fam=ip"
//	ip6 saddr @src6-$h ip6 daddr != @dst6-$h ip6 daddr != ff00::/8 masquerade comment "berth net=$net fam=ip6"
//
// The multicast tests are encoded as nft encodes them, so that nft lists
// them as written above: a masked 4-byte compare for the /4, a 1-byte
// compare for the /8.
func masqRule(network string, f natplan.Family, src, dst *nftables.Set) *nftables.Rule {
	proto, saddr, daddr, n := byte(unix.NFPROTO_IPV4), uint32(12), uint32(16), uint32(4)
	mcast := []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xf0, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0xe0, 0, 0, 0}},
	}
	if f == natplan.V6 {
		proto, saddr, daddr, n = byte(unix.NFPROTO_IPV6), 8, 24, 16
		mcast = []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0xff}},
		}
	}
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: src.Name, SetID: src.ID},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: n},
		&expr.Lookup{SourceRegister: 1, SetName: dst.Name, SetID: dst.ID, Invert: true},
	}
	exprs = append(exprs, mcast...)
	exprs = append(exprs, &expr.Masq{})
	return &nftables.Rule{
		Table:    natTable,
		Chain:    &nftables.Chain{Name: natplan.NFTChain, Table: natTable},
		Exprs:    exprs,
		UserData: userdata.AppendString(nil, userdata.TypeComment, natplan.NetworkTag(network, f.String()).String()),
	}
}
