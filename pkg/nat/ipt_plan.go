package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// iptables layout. Names are an API once released: never rename them.
const (
	iptChainPrefix = "BERTH-MASQ-" // + netHash: 27 bytes, under xtables' 28
	iptPost        = "POSTROUTING"
)

func iptChain(network string) string { return iptChainPrefix + netHash(network) }

// iptRule is one "-A" line of iptables-save, reduced to what berth writes.
type iptRule struct {
	Chain   string
	Spec    string       // the line after "-A <chain> ", as saved
	Src     netip.Prefix // -s
	Dst     netip.Prefix // -d
	DstNot  bool         // ! -d
	Comment string       // -m comment --comment
	Jump    string       // -j
}

// iptNat is the nat table of one iptables-save run.
type iptNat struct {
	Chains []string
	Rules  []iptRule
}

// parseSave reads "iptables-save -t nat" output. It is outside input: any
// tool may have written the table. Rules berth cannot read are kept with
// zero fields; lines outside "*nat … COMMIT" are ignored.
func parseSave(out string) (iptNat, error) {
	var nt iptNat
	in := false
	for n, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "*nat":
			in = true
		case !in || line == "" || line[0] == '#':
		case line == "COMMIT":
			in = false
		case line[0] == ':':
			name, _, _ := strings.Cut(line[1:], " ")
			nt.Chains = append(nt.Chains, name)
		case strings.HasPrefix(line, "-A "):
			r, err := parseRule(line[3:])
			if err != nil {
				return nt, fmt.Errorf("iptables-save line %d: %w", n+1, err)
			}
			nt.Rules = append(nt.Rules, r)
		}
	}
	return nt, nil
}

// parseRule reads "<chain> <spec>" of a saved "-A" line.
func parseRule(line string) (iptRule, error) {
	chain, spec, _ := strings.Cut(line, " ")
	r := iptRule{Chain: chain, Spec: spec}
	words, err := splitWords(spec)
	if err != nil {
		return r, err
	}
	not := false
	for i := 0; i < len(words); i++ {
		w := words[i]
		if w == "!" {
			not = true
			continue
		}
		arg := ""
		if i+1 < len(words) {
			arg = words[i+1]
		}
		switch w {
		case "-s", "-d":
			p, err := parsePrefix(arg)
			if err != nil {
				return r, fmt.Errorf("%s %q: %w", w, arg, err)
			}
			if w == "-s" {
				r.Src = p
			} else {
				r.Dst, r.DstNot = p, not
			}
			i++
		case "--comment":
			r.Comment = arg
			i++
		case "-j":
			r.Jump = arg
			i++
		}
		not = false
	}
	return r, nil
}

// parsePrefix reads an address with an optional /length.
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// splitWords splits a saved rule as iptables-restore would: on spaces,
// with "double quotes" in which a backslash escapes the next byte.
func splitWords(s string) ([]string, error) {
	var out []string
	var w strings.Builder
	inWord, quoted := false, false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case quoted && c == '\\':
			if i+1 == len(s) {
				return nil, errors.New("backslash at end of line")
			}
			i++
			w.WriteByte(s[i])
		case c == '"':
			quoted, inWord = !quoted, true
		case !quoted && (c == ' ' || c == '\t'):
			if inWord {
				out = append(out, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteByte(c)
			inWord = true
		}
	}
	if quoted {
		return nil, errors.New("unterminated quote")
	}
	if inWord {
		out = append(out, w.String())
	}
	return out, nil
}

// iptState is network's part of one family's nat table.
type iptState struct {
	Entries []entry   // the network's POSTROUTING rules, decoded
	Specs   []string  // Specs[i] is the saved text of Entries[i]
	Jumps   []string  // every POSTROUTING rule into the network chain
	Chain   bool      // the network chain exists
	Body    []iptRule // its rules
}

// iptNetwork selects network's rules of family f from a saved table.
func iptNetwork(network string, f family, nt iptNat) iptState {
	chain := iptChain(network)
	st := iptState{Chain: slices.Contains(nt.Chains, chain)}
	for _, r := range nt.Rules {
		switch {
		case r.Chain == chain:
			st.Body = append(st.Body, r)
		case r.Chain == iptPost && r.Jump == chain:
			st.Jumps = append(st.Jumps, r.Spec)
			t, err := parseTag(r.Comment)
			if err != nil || !t.hasOwner() || t.Network != storedNetwork(network) ||
				!r.Src.IsValid() || !r.Src.IsSingleIP() || !f.has(r.Src) || t.Bits > r.Src.Bits() {
				continue
			}
			st.Entries = append(st.Entries, entry{
				Owner: Owner{Network: network, ContainerID: t.ContainerID, IfName: t.IfName},
				Addr:  netip.PrefixFrom(r.Src.Addr(), t.Bits),
			})
			st.Specs = append(st.Specs, r.Spec)
		}
	}
	return st
}

// iptBody is the network chain berth wants for subnets: RETURN for traffic
// to a container subnet, then MASQUERADE for all but multicast.
func iptBody(network string, f family, subs []netip.Prefix) []iptRule {
	chain, c := iptChain(network), networkTag(network, "").String()
	var out []iptRule
	for _, p := range subs {
		out = append(out, iptRule{Chain: chain, Dst: p, Comment: c, Jump: "RETURN"})
	}
	return append(out, iptRule{Chain: chain, Dst: f.multicast(), DstNot: true, Comment: c, Jump: "MASQUERADE"})
}

// sameRule compares what berth writes of two rules, not their saved text.
func sameRule(a, b iptRule) bool {
	a.Spec, b.Spec = "", ""
	return a == b
}

// spec renders r as iptables-save would print it after "-A <chain> ".
func (r iptRule) spec() string {
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

// iptOps is one family's iptables-restore payload for one network.
type iptOps struct {
	Chain     string
	Write     bool     // declare (create or flush) the chain and fill it with Body
	Body      []string // specs of the chain's rules
	DelPost   []string // POSTROUTING specs to delete, as saved
	AddPost   []string // POSTROUTING specs to append
	DropChain bool     // flush and delete the chain, after DelPost
}

// planIPT turns a change of network's entries of family f into one payload.
func planIPT(network string, f family, st iptState, c change) iptOps {
	ops := iptOps{Chain: iptChain(network)}
	final := ofFamily(c.Final, f)
	if len(final) == 0 {
		if st.Chain {
			ops.DelPost, ops.DropChain = slices.Clone(st.Jumps), true
		}
		return ops
	}
	want := iptBody(network, f, subnets(final, f))
	if !st.Chain || !slices.EqualFunc(want, st.Body, sameRule) {
		ops.Write = true
		for _, r := range want {
			ops.Body = append(ops.Body, r.spec())
		}
	}
	used := make([]bool, len(st.Entries))
	for _, d := range ofFamily(c.Del, f) {
		for i, e := range st.Entries {
			if !used[i] && e == d {
				used[i] = true
				ops.DelPost = append(ops.DelPost, st.Specs[i])
				break
			}
		}
	}
	for _, a := range ofFamily(c.Add, f) {
		r := iptRule{Src: netip.PrefixFrom(a.Addr.Addr(), a.Addr.Addr().BitLen()),
			Comment: ownerTag(network, a).String(), Jump: ops.Chain}
		ops.AddPost = append(ops.AddPost, r.spec())
	}
	return ops
}

// payload renders ops for iptables-restore --noflush, or "" when there is
// nothing to do. Within one payload the chain is filled before rules jump
// to it and emptied of jumps before it is deleted.
func (o iptOps) payload() string {
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

// checkIPT names the first part of want (one owner's entries of family f)
// missing from st.
func checkIPT(network string, f family, st iptState, want []entry) error {
	want = ofFamily(want, f)
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
	body := iptBody(network, f, subnets(want, f))
	for _, r := range body {
		if !slices.ContainsFunc(st.Body, func(h iptRule) bool { return sameRule(h, r) || coversReturn(h, r) }) {
			return fmt.Errorf("%s: rule %q of chain %s is missing", f.tool(), r.spec(), chain)
		}
	}
	return nil
}

// coversReturn reports whether have is a RETURN for a subnet holding want's.
func coversReturn(have, want iptRule) bool {
	return want.Jump == "RETURN" && have.Jump == "RETURN" && !have.DstNot && have.Comment == want.Comment &&
		have.Dst.Bits() <= want.Dst.Bits() && have.Dst.Contains(want.Dst.Addr())
}

func (f family) tool() string {
	if f == v6 {
		return "ip6tables"
	}
	return "iptables"
}
