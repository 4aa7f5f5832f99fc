package esp

import (
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/netns"
)

// The guard is what keeps the network's VXLAN off the wire in the clear,
// installed before the VXLAN device exists and left in place when the
// agent stops or dies:
//
//   - an xfrm policy: the VTEP's UDP to the VXLAN port leaves only through
//     an ESP SA of the network's reqid; to a peer with no SA the kernel
//     drops it (no key manager answers the acquire), never sends it plain;
//   - nftables, table inet berth-esp-<hash>: in input, the network's VXLAN
//     (its port and VNI) that did not come out of an SA (meta secpath
//     missing) is dropped; in output, the network's VXLAN that is not
//     going into one (rt ipsec missing) is dropped — should the policy be
//     flushed by hand, nothing goes out plain either.
//
// The input rule is needed, not an xfrm "in" policy: the kernel hands UDP
// to VXLAN's socket before it checks in policies.

// policyPriority orders the network's policy before a default-priority
// (0 is the highest; strongSwan's are around 2^18) one of another IPsec
// user that would also match the VTEP's UDP.
const policyPriority = 100

// Metadata kinds google/nftables has no constant for (linux/netfilter/nf_tables.h).
const (
	metaSecpath = expr.MetaKey(25) // NFT_META_SECPATH: the packet came out of an SA
	rtXfrm      = expr.RtKey(4)    // NFT_RT_XFRM: the route goes into an SA
)

func (s Spec) policy() *netlink.XfrmPolicy {
	return &netlink.XfrmPolicy{
		Src:   &net.IPNet{IP: net.IP(s.VTEP.AsSlice()), Mask: net.CIDRMask(32, 32)},
		Dst:   &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Proto: netlink.Proto(unix.IPPROTO_UDP), DstPort: int(s.Port),
		Dir: netlink.XFRM_DIR_OUT, Priority: policyPriority,
		Tmpls: []netlink.XfrmPolicyTmpl{{
			Src: net.IPv4zero.To4(), Dst: net.IPv4zero.To4(),
			Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT, Reqid: int(s.Reqid),
		}},
	}
}

// comment tags the guard's rules.
func (s Spec) comment(dir string) string {
	return fmt.Sprintf("berth overlay %s: drop VXLAN %s without ESP", s.Network, dir)
}

// EnsureGuard installs (or repairs) the guard in ns: the policy (added or
// updated in place, so it never goes away) and the nftables table (created
// in one transaction when missing or not as planned; left alone, with its
// counters, when it is).
//
// Equivalent: ip xfrm policy update dir out src $vtep/32 dst 0.0.0.0/0 proto udp dport $port \
// priority 100 tmpl proto esp mode transport reqid $reqid; nft -f <table berth-esp-…>
func EnsureGuard(ns *netns.NS, s Spec) error {
	x, err := ns.Xfrm()
	if err != nil {
		return err
	}
	if err := x.XfrmPolicyUpdate(s.policy()); err != nil {
		return fmt.Errorf("install the xfrm policy of %s (dir out, udp dport %d from %s): %w", s.Network, s.Port, s.VTEP, err)
	}
	return ns.WithNFT(func(c *nftables.Conn) error {
		g, err := readGuard(c, s)
		if err != nil {
			return err
		}
		if g.ok(s) {
			return nil
		}
		t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(s.Network)}
		if g.table {
			c.DelTable(t) // not as planned: replaced in the same transaction
		}
		c.AddTable(t)
		for _, ch := range []struct {
			name string
			hook *nftables.ChainHook
			sa   []expr.Any
			dir  string
		}{
			{"input", nftables.ChainHookInput, []expr.Any{&expr.Meta{Key: metaSecpath, Register: 1}}, "in"},
			{"output", nftables.ChainHookOutput, []expr.Any{&expr.Rt{Key: rtXfrm, Register: 1}}, "out"},
		} {
			chain := c.AddChain(&nftables.Chain{Name: ch.name, Table: t, Type: nftables.ChainTypeFilter,
				Hooknum: ch.hook, Priority: nftables.ChainPriorityFilter})
			exprs := append(s.vxlanMatch(), ch.sa...)
			exprs = append(exprs,
				&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{0}},
				&expr.Counter{},
				&expr.Verdict{Kind: expr.VerdictDrop})
			c.AddRule(&nftables.Rule{Table: t, Chain: chain, Exprs: exprs,
				UserData: userdata.AppendString(nil, userdata.TypeComment, s.comment(ch.dir))})
		}
		if err := c.Flush(); err != nil {
			return fmt.Errorf("install nftables table %s of %s: %w", t.Name, s.Network, err)
		}
		return nil
	})
}

// vxlanMatch matches the network's VXLAN: UDP to its port, its VNI.
func (s Spec) vxlanMatch() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(s.Port)},
		// VXLAN: UDP's 8 bytes, flags 1, reserved 3, then the VNI's 3.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8 + 4, Len: 3},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{byte(s.VNI >> 16), byte(s.VNI >> 8), byte(s.VNI)}},
	}
}

// guard is the nftables half of a guard as the kernel holds it.
type guard struct {
	table   bool
	rules   map[string]int // rules per chain
	tagged  map[string]bool
	Dropped Counters
}

// Counters are the guard's drops: packets of the network's VXLAN that
// would have crossed in the clear.
type Counters struct {
	In, Out uint64
}

func (g guard) ok(s Spec) bool {
	return g.table && g.rules["input"] == 1 && g.rules["output"] == 1 && g.tagged["input"] && g.tagged["output"]
}

func readGuard(c *nftables.Conn, s Spec) (guard, error) {
	g := guard{rules: map[string]int{}, tagged: map[string]bool{}}
	t, err := c.ListTableOfFamily(TableName(s.Network), nftables.TableFamilyINet)
	if errors.Is(err, unix.ENOENT) {
		return g, nil
	}
	if err != nil {
		return g, fmt.Errorf("read nftables table %s: %w", TableName(s.Network), err)
	}
	g.table = true
	for _, name := range []string{"input", "output"} {
		rules, err := c.GetRules(t, &nftables.Chain{Name: name, Table: t})
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return g, fmt.Errorf("read nftables chain %s %s: %w", t.Name, name, err)
		}
		g.rules[name] = len(rules)
		dir := map[string]string{"input": "in", "output": "out"}[name]
		for _, r := range rules {
			if cm, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && cm == s.comment(dir) {
				g.tagged[name] = true
			}
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					if name == "input" {
						g.Dropped.In += ctr.Packets
					} else {
						g.Dropped.Out += ctr.Packets
					}
				}
			}
		}
	}
	return g, nil
}

// CheckGuard reports whether ns holds the network's whole guard, with
// its drop counters (as far as the table is there): an error names each
// part that is missing.
//
// Equivalent: ip xfrm policy get dir out src $vtep/32 dst 0.0.0.0/0 proto udp dport $port; nft list table inet berth-esp-…
func CheckGuard(ns *netns.NS, s Spec) (Counters, error) {
	var g guard
	err := ns.WithNFT(func(c *nftables.Conn) error {
		var err error
		g, err = readGuard(c, s)
		return err
	})
	if err != nil {
		return Counters{}, err
	}
	var errs []error
	if !g.ok(s) {
		errs = append(errs, fmt.Errorf("nftables table inet %s of %s is missing or changed (rules: input %d, output %d)",
			TableName(s.Network), s.Network, g.rules["input"], g.rules["output"]))
	}
	x, err := ns.Xfrm()
	if err != nil {
		return g.Dropped, errors.Join(append(errs, err)...)
	}
	p, err := x.XfrmPolicyGet(s.policy())
	switch {
	case err != nil:
		errs = append(errs, fmt.Errorf("the xfrm policy of %s (dir out, udp dport %d from %s) is missing: %w", s.Network, s.Port, s.VTEP, err))
	case len(p.Tmpls) != 1 || p.Tmpls[0].Proto != netlink.XFRM_PROTO_ESP || p.Tmpls[0].Reqid != int(s.Reqid) || p.Action != netlink.XFRM_POLICY_ALLOW:
		errs = append(errs, fmt.Errorf("the xfrm policy of %s (dir out, udp dport %d from %s) is not berth's: %v", s.Network, s.Port, s.VTEP, p))
	}
	return g.Dropped, errors.Join(errs...)
}

// DeleteGuard removes the guard from ns (the network no longer encrypts):
// the policy and the table; what is gone already is no error. It reports
// whether there was anything to remove.
//
// Equivalent: ip xfrm policy del dir out src $vtep/32 dst 0.0.0.0/0 proto udp dport $port; nft delete table inet berth-esp-…
func DeleteGuard(ns *netns.NS, s Spec) (removed bool, err error) {
	var errs []error
	if x, err := ns.Xfrm(); err != nil {
		errs = append(errs, err)
	} else if err := x.XfrmPolicyDel(s.policy()); err == nil {
		removed = true
	} else if !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("delete the xfrm policy of %s: %w", s.Network, err))
	}
	err = ns.WithNFT(func(c *nftables.Conn) error {
		g, err := readGuard(c, s)
		if err != nil || !g.table {
			return err
		}
		removed = true
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(s.Network)})
		return c.Flush()
	})
	if err != nil {
		errs = append(errs, fmt.Errorf("delete nftables table %s of %s: %w", TableName(s.Network), s.Network, err))
	}
	return removed, errors.Join(errs...)
}
