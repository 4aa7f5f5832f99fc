package natplan

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/owner"
)

// iptables layout. Names are an API once released: never rename them.
const (
	iptChainPrefix = "BERTH-MASQ-" // + netHash: 27 bytes, under xtables' 28
	iptPost        = "POSTROUTING"
)

func iptChain(network string) string { return iptChainPrefix + netHash(network) }

// IPTState is network's part of one family's nat table.
type IPTState struct {
	Entries []Entry         // the network's POSTROUTING rules, decoded
	Specs   []string        // Specs[i] is the saved text of Entries[i]
	Jumps   []string        // every POSTROUTING rule into the network chain
	Chain   bool            // the network chain exists
	Body    []iptables.Rule // its rules
}

// IPTNetwork selects network's rules of family f from a saved table.
func IPTNetwork(network string, f Family, nt iptables.Table) IPTState {
	chain := iptChain(network)
	st := IPTState{Chain: slices.Contains(nt.Chains, chain)}
	for _, r := range nt.Rules {
		switch {
		case r.Chain == chain:
			st.Body = append(st.Body, r)
		case r.Chain == iptPost && r.Jump == chain:
			st.Jumps = append(st.Jumps, r.Spec)
			t, err := ParseTag(r.Comment)
			if err != nil || !t.HasOwner() || t.Network != storedNetwork(network) ||
				!r.Src.IsValid() || !r.Src.IsSingleIP() || !f.Has(r.Src) || t.Bits > r.Src.Bits() {
				continue
			}
			st.Entries = append(st.Entries, Entry{
				Owner: owner.Owner{Network: network, ContainerID: t.ContainerID, IfName: t.IfName},
				Addr:  netip.PrefixFrom(r.Src.Addr(), t.Bits),
			})
			st.Specs = append(st.Specs, r.Spec)
		}
	}
	return st
}

// iptBody is the network chain berth wants for subnets: RETURN for traffic
// to a container subnet, then MASQUERADE for all but multicast.
func iptBody(network string, f Family, subs []netip.Prefix) []iptables.Rule {
	chain, c := iptChain(network), NetworkTag(network, "").String()
	var out []iptables.Rule
	for _, p := range subs {
		out = append(out, iptables.Rule{Chain: chain, Dst: p, Comment: c, Jump: "RETURN"})
	}
	return append(out, iptables.Rule{Chain: chain, Dst: f.multicast(), DstNot: true, Comment: c, Jump: "MASQUERADE"})
}

// sameRule compares what berth writes of two rules, not their saved text.
func sameRule(a, b iptables.Rule) bool {
	a.Spec, b.Spec = "", ""
	return a == b
}

// ruleSpec renders r as iptables-save would print it after "-A <chain> ".
func ruleSpec(r iptables.Rule) string {
	var b strings.Builder
	if r.Src.IsValid() {
		fmt.Fprintf(&b, "-s %s ", r.Src)
	}
	if r.Dst.IsValid() {
		if r.DstNot {
			b.WriteString("! ")
		}
		fmt.Fprintf(&b, "-d %s ", r.Dst)
	}
	// A berth tag never holds a quote or a backslash (see escape).
	fmt.Fprintf(&b, "-m comment --comment %q -j %s", r.Comment, r.Jump)
	return b.String()
}

// IPTOps is one family's iptables-restore payload for one network.
type IPTOps struct {
	Chain     string
	Write     bool     // declare (create or flush) the chain and fill it with Body
	Body      []string // specs of the chain's rules
	DelPost   []string // POSTROUTING specs to delete, as saved
	AddPost   []string // POSTROUTING specs to append
	DropChain bool     // flush and delete the chain, after DelPost
}

// PlanIPT turns a change of network's entries of family f into one payload.
func PlanIPT(network string, f Family, st IPTState, c Change) IPTOps {
	ops := IPTOps{Chain: iptChain(network)}
	final := OfFamily(c.Final, f)
	if len(final) == 0 {
		if st.Chain {
			ops.DelPost, ops.DropChain = slices.Clone(st.Jumps), true
		}
		return ops
	}
	want := iptBody(network, f, Subnets(final, f))
	if !st.Chain || !slices.EqualFunc(want, st.Body, sameRule) {
		ops.Write = true
		for _, r := range want {
			ops.Body = append(ops.Body, ruleSpec(r))
		}
	}
	used := make([]bool, len(st.Entries))
	for _, d := range OfFamily(c.Del, f) {
		for i, e := range st.Entries {
			if !used[i] && e == d {
				used[i] = true
				ops.DelPost = append(ops.DelPost, st.Specs[i])
				break
			}
		}
	}
	for _, a := range OfFamily(c.Add, f) {
		r := iptables.Rule{Src: netip.PrefixFrom(a.Addr.Addr(), a.Addr.Addr().BitLen()),
			Comment: OwnerTag(network, a).String(), Jump: ops.Chain}
		ops.AddPost = append(ops.AddPost, ruleSpec(r))
	}
	return ops
}

// Payload renders ops for iptables-restore --noflush, or "" when there is
// nothing to do. Within one payload the chain is filled before rules jump
// to it and emptied of jumps before it is deleted.
func (o IPTOps) Payload() string {
	if !o.Write && len(o.DelPost) == 0 && len(o.AddPost) == 0 && !o.DropChain {
		return ""
	}
	var b strings.Builder
	b.WriteString("*nat\n")
	if o.Write {
		// With --noflush, declaring a user chain creates it or flushes it.
		fmt.Fprintf(&b, ":%s - [0:0]\n", o.Chain)
		for _, s := range o.Body {
			fmt.Fprintf(&b, "-A %s %s\n", o.Chain, s)
		}
	}
	for _, s := range o.DelPost {
		fmt.Fprintf(&b, "-D %s %s\n", iptPost, s)
	}
	for _, s := range o.AddPost {
		fmt.Fprintf(&b, "-A %s %s\n", iptPost, s)
	}
	if o.DropChain {
		fmt.Fprintf(&b, "-F %s\n-X %s\n", o.Chain, o.Chain)
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// CheckIPT names the first part of want (one owner's entries of family f)
// missing from st.
func CheckIPT(network string, f Family, st IPTState, want []Entry) error {
	want = OfFamily(want, f)
	if len(want) == 0 {
		return nil
	}
	chain := iptChain(network)
	if !st.Chain {
		return fmt.Errorf("%s: chain %s of network %q is missing", f.tool(), chain, network)
	}
	if m := missing(st.Entries, want); m != "" {
		return fmt.Errorf("%s: %s rule for %s is missing", f.tool(), iptPost, m)
	}
	body := iptBody(network, f, Subnets(want, f))
	for _, r := range body {
		if !slices.ContainsFunc(st.Body, func(h iptables.Rule) bool { return sameRule(h, r) || coversReturn(h, r) }) {
			return fmt.Errorf("%s: rule %q of chain %s is missing", f.tool(), ruleSpec(r), chain)
		}
	}
	return nil
}

// coversReturn reports whether have is a RETURN for a subnet holding want's.
func coversReturn(have, want iptables.Rule) bool {
	return want.Jump == "RETURN" && have.Jump == "RETURN" && !have.DstNot && have.Comment == want.Comment &&
		have.Dst.Bits() <= want.Dst.Bits() && have.Dst.Contains(want.Dst.Addr())
}

func (f Family) tool() string {
	if f == V6 {
		return "ip6tables"
	}
	return "iptables"
}
