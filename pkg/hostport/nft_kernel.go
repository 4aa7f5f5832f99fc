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
	"github.com/berth-cni/berth/pkg/hostport/portplan"
)

// The kernel edge of the nftables datapath: the table's netlink objects
// (sets, chains, rules as expressions) and portplan.Elem in the bytes of
// nftables.SetElement, over one google/nftables connection.

var pmTable = &nftables.Table{Name: portplan.NFTTable, Family: nftables.TableFamilyINet}

// fam is one address family's sets.
type fam struct {
	any, addr, hairpin, masqall  *nftables.Set
	nfproto                      byte
	saddrOff, daddrOff, addrLen  uint32
	regProto, regPort, regTarget uint32 // 32-bit registers after the address
}

// fams are the families in table order: IPv4, IPv6.
var fams = [2]*fam{newFam(false), newFam(true)}

func newFam(v6 bool) *fam {
	f := &fam{nfproto: unix.NFPROTO_IPV4, saddrOff: 12, daddrOff: 16, addrLen: 4}
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

// set is the family's set of kind k.
func (f *fam) set(k portplan.SetKind) *nftables.Set {
	switch k {
	case portplan.SetAny:
		return f.any
	case portplan.SetAddr:
		return f.addr
	case portplan.SetHairpin:
		return f.hairpin
	}
	return f.masqall
}

// setNamed finds one of the table's sets by name.
func setNamed(name string) (*nftables.Set, *fam, portplan.SetKind, bool) {
	for _, f := range fams {
		for _, k := range portplan.SetKinds {
			if s := f.set(k); s.Name == name {
				return s, f, k, true
			}
		}
	}
	return nil, nil, "", false
}

// kernelNFT is nftConn over a netlink connection in the table's namespace.
type kernelNFT struct{ c *nftables.Conn }

// Elements reads a set over netlink and decodes its elements; those that
// are not in berth's form (written by another tool) are left out, as
// they cannot have a key berth writes.
func (k kernelNFT) Elements(set string) (es []portplan.Elem, err error) {
	s, f, kind, ok := setNamed(set)
	if !ok {
		return nil, fmt.Errorf("no set %s in berth's table: %w", set, unix.ENOENT)
	}
	// google/nftables decodes element comments with a TLV reader that
	// panics on malformed kernel data; report that as an error instead.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("decode set %s: %v", set, r)
		}
	}()
	raw, err := k.c.GetSetElements(s)
	if err != nil {
		// GetSetElements drops the errno from its error; the same
		// question about the set keeps it, so that a missing table
		// or set reads as unix.ENOENT.
		if _, serr := k.c.GetSetByName(pmTable, set); errors.Is(serr, unix.ENOENT) {
			return nil, serr
		}
		return nil, err
	}
	for _, r := range raw {
		if e, ok := decodeElem(f, kind, r); ok {
			es = append(es, e)
		}
	}
	return es, nil
}

// Apply queues tx and sends it as one batch.
func (k kernelNFT) Apply(tx nftTx) error {
	add := encodeBySet(tx.Add, false)
	if tx.Create {
		if err := queueTable(k.c, add); err != nil {
			return err
		}
	}
	del := encodeBySet(tx.Del, true)
	for _, name := range portplan.SetNames {
		if len(del[name]) == 0 {
			continue
		}
		s, _, _, _ := setNamed(name)
		if err := k.c.SetDeleteElements(s, del[name]); err != nil {
			return err
		}
	}
	if !tx.Create { // the new sets hold add already
		for _, name := range portplan.SetNames {
			if len(add[name]) == 0 {
				continue
			}
			s, _, _, _ := setNamed(name)
			if err := k.c.SetAddElements(s, add[name]); err != nil {
				return err
			}
		}
	}
	return k.c.Flush()
}

// encodeBySet encodes es by set name; keysOnly leaves out what a deletion
// does not send (the value, the comment).
func encodeBySet(es []portplan.Elem, keysOnly bool) map[string][]nftables.SetElement {
	out := map[string][]nftables.SetElement{}
	for _, e := range es {
		se := encodeElem(e)
		if keysOnly {
			se = nftables.SetElement{Key: se.Key, KeyEnd: se.KeyEnd}
		}
		out[e.Set()] = append(out[e.Set()], se)
	}
	return out
}

// encodeElem is e in the bytes of its set's types: addresses in network
// order, a protocol or a port in a 32-bit register of its own (padded).
func encodeElem(e portplan.Elem) nftables.SetElement {
	t := e.Target.Addr().AsSlice()
	var se nftables.SetElement
	switch e.Kind {
	case portplan.SetAny:
		se.Key = slices.Concat(protoBytes(e.Proto), portBytes(e.HostPort))
	case portplan.SetAddr:
		se.Key = slices.Concat(e.HostAddr.AsSlice(), protoBytes(e.Proto), portBytes(e.HostPort))
	case portplan.SetHairpin:
		se.Key = slices.Concat(e.Src.Masked().Addr().AsSlice(), t)
		se.KeyEnd = slices.Concat(cidr.Last(e.Src).AsSlice(), t)
	case portplan.SetMasqAll:
		se.Key = slices.Concat(t, protoBytes(e.Proto), portBytes(e.Target.Port()))
	}
	if e.IsMap() {
		se.Val = slices.Concat(t, portBytes(e.Target.Port()))
	}
	se.Comment = e.Comment
	return se
}

// decodeElem reverses encodeElem for an element of f's set of kind k; ok
// is false for one berth would not write.
func decodeElem(f *fam, k portplan.SetKind, se nftables.SetElement) (portplan.Elem, bool) {
	n := int(f.addrLen)
	e := portplan.Elem{Kind: k, Comment: se.Comment}
	key := se.Key
	var ok bool
	switch k {
	case portplan.SetAny:
		if len(key) != 8 {
			return portplan.Elem{}, false
		}
		e.Proto, ok = protoName(key[0])
		e.HostPort = port(key[4:])
	case portplan.SetAddr:
		if len(key) != n+8 {
			return portplan.Elem{}, false
		}
		e.HostAddr = addrAt(key, 0, n)
		e.Proto, ok = protoName(key[n])
		e.HostPort = port(key[n+4:])
	case portplan.SetHairpin:
		end := se.KeyEnd
		if len(key) != 2*n || len(end) != 2*n || !slices.Equal(key[n:], end[n:]) {
			return portplan.Elem{}, false
		}
		e.Src, ok = rangePrefix(addrAt(key, 0, n), addrAt(end, 0, n))
		e.Target = netip.AddrPortFrom(addrAt(key, n, n), 0)
	case portplan.SetMasqAll:
		if len(key) != n+8 {
			return portplan.Elem{}, false
		}
		e.Proto, ok = protoName(key[n])
		e.Target = netip.AddrPortFrom(addrAt(key, 0, n), port(key[n+4:]))
	}
	if e.IsMap() {
		if len(se.Val) != n+4 {
			return portplan.Elem{}, false
		}
		e.Target = netip.AddrPortFrom(addrAt(se.Val, 0, n), port(se.Val[n:]))
	}
	return e, ok
}

func protoBytes(p string) []byte { return []byte{portplan.ProtoNumber(p), 0, 0, 0} }
func portBytes(p uint16) []byte  { return []byte{byte(p >> 8), byte(p), 0, 0} }

func port(b []byte) uint16 { return uint16(b[0])<<8 | uint16(b[1]) }

func addrAt(b []byte, off, n int) netip.Addr {
	a, _ := netip.AddrFromSlice(b[off : off+n])
	return a
}

func protoName(p byte) (string, bool) {
	for _, n := range []string{"tcp", "udp", "sctp"} {
		if portplan.ProtoNumber(n) == p {
			return n, true
		}
	}
	return "", false
}

// rangePrefix is the prefix covering exactly first-last, if there is one.
func rangePrefix(first, last netip.Addr) (netip.Prefix, bool) {
	for bits := 0; bits <= first.BitLen(); bits++ {
		p := netip.PrefixFrom(first, bits)
		if p.Masked().Addr() == first && cidr.Last(p) == last {
			return p, true
		}
	}
	return netip.Prefix{}, false
}

// queueTable queues the whole table, its sets holding elems' elements
// (by set name), its chains and its rules. CreateTable fails the
// transaction if the table exists.
func queueTable(c *nftables.Conn, elems map[string][]nftables.SetElement) error {
	c.CreateTable(pmTable)
	for _, f := range fams {
		for _, s := range f.sets() {
			if err := c.AddSet(s, elems[s.Name]); err != nil {
				return fmt.Errorf("add set %s: %w", s.Name, err)
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
	return nil
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

// ipsDstNAT is conntrack's IPS_DST_NAT status bit (linux/netfilter/nf_conntrack_common.h).
const ipsDstNAT = 1 << 5
