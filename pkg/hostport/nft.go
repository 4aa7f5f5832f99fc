package hostport

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

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/netns"
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
// (another container cannot hold an overlapping wildcard).
const NFTTable = "berth-portmap"

var pmTable = &nftables.Table{Name: NFTTable, Family: nftables.TableFamilyINet}

// fam is one address family's sets.
type fam struct {
	v6                           bool
	any, addr, hairpin, masqall  *nftables.Set
	nfproto                      byte
	saddrOff, daddrOff, addrLen  uint32
	regProto, regPort, regTarget uint32 // 32-bit registers after the address
}

var fams = [2]*fam{newFam(false), newFam(true)}

func famOf(v6 bool) *fam {
	if v6 {
		return fams[1]
	}
	return fams[0]
}

func newFam(v6 bool) *fam {
	f := &fam{v6: v6, nfproto: unix.NFPROTO_IPV4, saddrOff: 12, daddrOff: 16, addrLen: 4}
	addrType, sfx := nftables.TypeIPAddr, "4"
	if v6 {
		f.nfproto, f.saddrOff, f.daddrOff, f.addrLen = unix.NFPROTO_IPV6, 8, 24, 16
		addrType, sfx = nftables.TypeIP6Addr, "6"
	}
	// Concatenations use 32-bit registers (NFT_REG32_00 = 8 is where
	// register 1 starts): the address fills addrLen/4 of them, then the
	// protocol and the port one each.
	f.regProto = 8 + f.addrLen/4
	f.regPort = f.regProto + 1
	f.regTarget = f.regProto // the target's port follows its address
	target := nftables.MustConcatSetType(addrType, nftables.TypeInetService)
	f.any = &nftables.Set{Table: pmTable, Name: "any" + sfx, IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService), DataType: target}
	f.addr = &nftables.Set{Table: pmTable, Name: "addr" + sfx, IsMap: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addrType, nftables.TypeInetProto, nftables.TypeInetService), DataType: target}
	f.hairpin = &nftables.Set{Table: pmTable, Name: "hairpin" + sfx, Interval: true, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addrType, addrType)}
	f.masqall = &nftables.Set{Table: pmTable, Name: "masqall" + sfx, Concatenation: true,
		KeyType: nftables.MustConcatSetType(addrType, nftables.TypeInetProto, nftables.TypeInetService)}
	return f
}

func (f *fam) sets() []*nftables.Set { return []*nftables.Set{f.any, f.addr, f.hairpin, f.masqall} }

// NFT is the nftables datapath of one namespace, programmed over netlink
// in-process.
type NFT struct {
	ns *netns.NS
}

// NewNFT returns the nftables datapath of n.
func NewNFT(n *netns.NS) *NFT { return &NFT{ns: n} }

// elems is what an attachment puts in each set, by set name.
type elems map[string][]nftables.SetElement

func (e elems) add(s *nftables.Set, el nftables.SetElement) {
	for _, o := range e[s.Name] {
		if slices.Equal(o.Key, el.Key) && slices.Equal(o.KeyEnd, el.KeyEnd) {
			return
		}
	}
	e[s.Name] = append(e[s.Name], el)
}

// elementsOf computes a's elements. Every element carries a comment naming
// its holder, for people reading `nft list table inet berth-portmap`.
func elementsOf(a Attachment) elems {
	out := elems{}
	comment := holderComment(a)
	for _, v6 := range []bool{false, true} {
		t, ok := a.Target(v6)
		if !ok {
			continue
		}
		f := famOf(v6)
		used := false
		for _, m := range a.Mappings {
			if v4, v6ok := m.Families(); (v6 && !v6ok) || (!v6 && !v4) {
				continue
			}
			used = true
			val := slices.Concat(t.Addr().AsSlice(), portBytes(m.ContainerPort))
			if m.Addr.IsValid() && !m.Addr.IsUnspecified() {
				out.add(f.addr, nftables.SetElement{Key: slices.Concat(m.Addr.AsSlice(), protoBytes(m.Proto), portBytes(m.Port)), Val: val, Comment: comment})
			} else {
				out.add(f.any, nftables.SetElement{Key: slices.Concat(protoBytes(m.Proto), portBytes(m.Port)), Val: val, Comment: comment})
			}
			if a.MasqAll {
				out.add(f.masqall, nftables.SetElement{Key: slices.Concat(t.Addr().AsSlice(), protoBytes(m.Proto), portBytes(m.ContainerPort)), Comment: comment})
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
			out.add(f.hairpin, nftables.SetElement{
				Key:     slices.Concat(s.Addr().AsSlice(), t.Addr().AsSlice()),
				KeyEnd:  slices.Concat(cidr.Last(s).AsSlice(), t.Addr().AsSlice()),
				Comment: comment,
			})
		}
	}
	return out
}

func holderComment(a Attachment) string {
	c := fmt.Sprintf("berth id=%s if=%s net=%s", a.Owner.ContainerID, a.Owner.IfName, a.Owner.Network)
	if len(c) > 200 {
		c = c[:200]
	}
	return c
}

func protoBytes(p string) []byte { return []byte{ProtoNumber(p), 0, 0, 0} }
func portBytes(p uint16) []byte  { return []byte{byte(p >> 8), byte(p), 0, 0} }

// Add programs a's mappings: one transaction adding its elements. The
// first ADD on a host creates the table, sets, chains and rules in that
// same transaction.
//
// Equivalent: nft add element inet berth-portmap any4 { tcp . 8080 : 10.88.0.5 . 80 }; …
func (d *NFT) Add(a Attachment) error {
	want := elementsOf(a)
	return d.ns.WithNFT(func(c *nftables.Conn) error {
		queueAdd(c, want)
		err := c.Flush()
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.ENOENT):
			// No table yet: create it whole, with the elements. If
			// another ADD created it meanwhile, CreateTable fails the
			// batch and the plain add is tried once more.
			if err := createTable(c, want); err == nil || !errors.Is(err, unix.EEXIST) {
				return nftErr("create table", err)
			}
			queueAdd(c, want)
			return nftErr("add elements", c.Flush())
		case errors.Is(err, unix.EEXIST), errors.Is(err, unix.EBUSY):
			// A key is there with another target: this holder's own
			// earlier ADD (a retry after the container's address
			// changed). Replace its elements.
			if err := queueDelPresent(c, want); err != nil {
				return err
			}
			queueAdd(c, want)
			return nftErr("replace elements", c.Flush())
		}
		return nftErr("add elements", err)
	})
}

// Remove deletes a's elements in one transaction. Missing elements (a
// crashed ADD, a second DEL) are not an error.
//
// Equivalent: nft delete element inet berth-portmap any4 { tcp . 8080 }; …
func (d *NFT) Remove(a Attachment) error {
	have := elementsOf(a)
	return d.ns.WithNFT(func(c *nftables.Conn) error {
		if err := queueDel(c, have); err != nil {
			return err
		}
		err := c.Flush()
		if err == nil || !errors.Is(err, unix.ENOENT) {
			return nftErr("delete elements", err)
		}
		// Some element or the table is missing: delete what is there.
		if err := queueDelPresent(c, have); err != nil {
			return err
		}
		return nftErr("delete elements", c.Flush())
	})
}

// Check names the first of a's elements missing from the table, or one
// that leads elsewhere.
func (d *NFT) Check(a Attachment) error {
	want := elementsOf(a)
	return d.ns.WithNFT(func(c *nftables.Conn) error {
		for _, f := range fams {
			for _, s := range f.sets() {
				if len(want[s.Name]) == 0 {
					continue
				}
				have, err := c.GetSetElements(s)
				if err != nil {
					return fmt.Errorf("portmap: table inet %s, set %s: %w", NFTTable, s.Name, err)
				}
				for _, w := range want[s.Name] {
					i := slices.IndexFunc(have, func(h nftables.SetElement) bool { return sameKey(s, h, w) })
					if i < 0 {
						return fmt.Errorf("portmap: table inet %s, set %s has no element %s for container %s", NFTTable, s.Name, describe(s, w), a.Owner.ContainerID)
					}
					if s.IsMap && !slices.Equal(have[i].Val, w.Val) {
						return fmt.Errorf("portmap: table inet %s, map %s sends %s to %s, want %s", NFTTable, s.Name, describe(s, w), describeVal(s, have[i].Val), describeVal(s, w.Val))
					}
				}
			}
		}
		return nil
	})
}

func nftErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("portmap: nftables: %s in table inet %s: %w", what, NFTTable, err)
}

func queueAdd(c *nftables.Conn, e elems) {
	for _, f := range fams {
		for _, s := range f.sets() {
			if len(e[s.Name]) > 0 {
				// Errors here are only for malformed elements, which
				// elementsOf does not make; Flush reports the rest.
				_ = c.SetAddElements(s, e[s.Name])
			}
		}
	}
}

func queueDel(c *nftables.Conn, e elems) error {
	for _, f := range fams {
		for _, s := range f.sets() {
			if len(e[s.Name]) == 0 {
				continue
			}
			if err := c.SetDeleteElements(s, keysOnly(e[s.Name])); err != nil {
				return nftErr("delete elements", err)
			}
		}
	}
	return nil
}

// queueDelPresent queues the deletion of those of e's keys that are in the
// table now (whatever their value). It reads the sets: the slow path, for
// state a crash or a retry left.
func queueDelPresent(c *nftables.Conn, e elems) error {
	present := elems{}
	for _, f := range fams {
		for _, s := range f.sets() {
			if len(e[s.Name]) == 0 {
				continue
			}
			have, err := c.GetSetElements(s)
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			if err != nil {
				return nftErr("read set "+s.Name, err)
			}
			for _, w := range e[s.Name] {
				if slices.ContainsFunc(have, func(h nftables.SetElement) bool { return sameKey(s, h, w) }) {
					present.add(s, w)
				}
			}
		}
	}
	return queueDel(c, present)
}

func keysOnly(es []nftables.SetElement) []nftables.SetElement {
	out := make([]nftables.SetElement, len(es))
	for i, e := range es {
		out[i] = nftables.SetElement{Key: e.Key, KeyEnd: e.KeyEnd}
	}
	return out
}

func sameKey(s *nftables.Set, a, b nftables.SetElement) bool {
	return slices.Equal(a.Key, b.Key) && (!s.Interval || slices.Equal(a.KeyEnd, b.KeyEnd))
}

// createTable queues the whole table with e's elements and sends it.
func createTable(c *nftables.Conn, e elems) error {
	c.CreateTable(pmTable)
	for _, f := range fams {
		for _, s := range f.sets() {
			if err := c.AddSet(s, e[s.Name]); err != nil {
				return nftErr("add set "+s.Name, err)
			}
		}
	}
	accept := nftables.ChainPolicyAccept
	hostports := c.AddChain(&nftables.Chain{Name: "hostports", Table: pmTable})
	pre := c.AddChain(&nftables.Chain{Name: "prerouting", Table: pmTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	out := c.AddChain(&nftables.Chain{Name: "output", Table: pmTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept})
	post := c.AddChain(&nftables.Chain{Name: "postrouting", Table: pmTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept})
	for _, ch := range []*nftables.Chain{pre, out} {
		c.AddRule(&nftables.Rule{Table: pmTable, Chain: ch, Exprs: []expr.Any{
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
			&expr.Verdict{Kind: expr.VerdictJump, Chain: hostports.Name},
		}})
	}
	for _, f := range fams {
		c.AddRule(&nftables.Rule{Table: pmTable, Chain: hostports, Exprs: f.dnatRule(true), UserData: comment("dnat " + f.addr.Name)})
		c.AddRule(&nftables.Rule{Table: pmTable, Chain: hostports, Exprs: f.dnatRule(false), UserData: comment("dnat " + f.any.Name)})
	}
	for _, f := range fams {
		c.AddRule(&nftables.Rule{Table: pmTable, Chain: post, Exprs: f.hairpinRule(), UserData: comment("masquerade " + f.hairpin.Name)})
		c.AddRule(&nftables.Rule{Table: pmTable, Chain: post, Exprs: f.masqallRule(), UserData: comment("masquerade " + f.masqall.Name)})
	}
	return c.Flush()
}

func comment(s string) []byte { return userdata.AppendString(nil, userdata.TypeComment, "berth "+s) }

// nfproto matches the packet's family.
func (f *fam) nfprotoMatch() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.nfproto}},
	}
}

// dnatRule: meta nfproto ipvX dnat ipX to [ipX daddr .] meta l4proto . th dport map @addrX|@anyX
func (f *fam) dnatRule(withAddr bool) []expr.Any {
	e := f.nfprotoMatch()
	set, regProto := f.any, uint32(1)
	if withAddr {
		set, regProto = f.addr, f.regProto
		e = append(e, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen})
	}
	e = append(e,
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: regProto},
		&expr.Payload{DestRegister: regProto + nextReg(regProto), Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, DestRegister: 1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.nfproto), RegAddrMin: 1, RegProtoMin: f.regTarget, Specified: true},
	)
	return e
}

// nextReg is the distance from register r to the next 32-bit register: r
// is a 32-bit register (8 and up), or register 1, whose first 32-bit
// register is 8.
func nextReg(r uint32) uint32 {
	if r == 1 {
		return 8
	}
	return 1
}

// ctDNAT matches connections whose destination the host rewrote.
func ctDNAT() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(ipsDstNAT), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}

// hairpinRule: ct status dnat ipX saddr . ipX daddr @hairpinX masquerade
func (f *fam) hairpinRule() []expr.Any {
	e := slices.Concat(f.nfprotoMatch(), ctDNAT())
	return append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.saddrOff, Len: f.addrLen},
		&expr.Payload{DestRegister: 8 + f.addrLen/4, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen},
		&expr.Lookup{SourceRegister: 1, SetName: f.hairpin.Name},
		&expr.Masq{},
	)
}

// masqallRule: ct status dnat ipX daddr . meta l4proto . th dport @masqallX masquerade
func (f *fam) masqallRule() []expr.Any {
	e := slices.Concat(f.nfprotoMatch(), ctDNAT())
	return append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: f.daddrOff, Len: f.addrLen},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: f.regProto},
		&expr.Payload{DestRegister: f.regPort, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: 1, SetName: f.masqall.Name},
		&expr.Masq{},
	)
}

// describe renders an element's key for messages: "tcp . 8080",
// "10.0.0.1 . tcp . 8080", "10.88.0.0-10.88.255.255 . 10.88.0.5".
func describe(s *nftables.Set, e nftables.SetElement) string {
	n := 4
	if s.Name[len(s.Name)-1] == '6' {
		n = 16
	}
	k := e.Key
	switch {
	case s.Interval && len(k) == 2*n && len(e.KeyEnd) == 2*n:
		return fmt.Sprintf("%s-%s . %s", addrAt(k, 0, n), addrAt(e.KeyEnd, 0, n), addrAt(k, n, n))
	case s.Name[:3] == "any" && len(k) == 8:
		return fmt.Sprintf("%s . %d", protoName(k[0]), int(k[4])<<8|int(k[5]))
	case len(k) == n+8:
		return fmt.Sprintf("%s . %s . %d", addrAt(k, 0, n), protoName(k[n]), int(k[n+4])<<8|int(k[n+5]))
	}
	return fmt.Sprintf("%x", k)
}

// describeVal renders a map value, "10.88.0.5 . 80".
func describeVal(s *nftables.Set, v []byte) string {
	if len(v) == 8 || len(v) == 20 {
		n := len(v) - 4
		return fmt.Sprintf("%s . %d", addrAt(v, 0, n), int(v[n])<<8|int(v[n+1]))
	}
	return fmt.Sprintf("%x", v)
}

func addrAt(b []byte, off, n int) string {
	a, _ := netip.AddrFromSlice(b[off : off+n])
	return a.String()
}

func protoName(p byte) string {
	for _, n := range []string{"tcp", "udp", "sctp"} {
		if ProtoNumber(n) == p {
			return n
		}
	}
	return fmt.Sprint(p)
}

// ipsDstNAT is conntrack's IPS_DST_NAT status bit (linux/netfilter/nf_conntrack_common.h).
const ipsDstNAT = 1 << 5
