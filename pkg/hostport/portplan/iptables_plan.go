package portplan

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/owner"
)

// The iptables layout (hostport.IPTables has the picture). Names are an
// API once released: never rename them.
const (
	IPTHostports = "BERTH-HOSTPORTS" // DNAT: one jump per attachment
	IPTMasq      = "BERTH-HP-MASQ"   // masquerade of marked packets
	iptDNPrefix  = "BERTH-DN-"       // + 12 hex digits: 21 bytes, under xtables' 28
)

// Base rules, the same for every attachment, as iptables-save prints them.
const (
	iptBaseJump = `-m addrtype --dst-type LOCAL -m comment --comment "berth portmap" -j ` + IPTHostports
	iptMasqJump = `-m comment --comment "berth portmap" -j ` + IPTMasq
)

// iptMaxPorts is how many ports one multiport match takes.
const iptMaxPorts = 15

// IPTChain is the chain of one attachment's rules: BERTH-DN- and 12 hex
// digits of the owner's hash, the same digits as its host veth's name.
func IPTChain(o owner.Owner) string { return iptDNPrefix + o.Hash(12) }

// IPTOpts is what the config adds to an attachment's rules.
type IPTOpts struct {
	cond      [2][]string // extra matches on the jump into its chain: IPv4, IPv6
	markBit   int         // the bit marking packets to masquerade
	markChain string      // externalSetMarkChain: jump there instead of marking
}

// IPTOptsOf reads and checks the config's iptables options. Every word goes
// into a restore payload: one condition is one argument, and none may be
// empty (iptables-restore drops "") or hold a control character (a newline
// would start a rule of its own).
func IPTOptsOf(conf *config.Portmap) (IPTOpts, error) {
	o := IPTOpts{markBit: config.DefaultMarkMasqBit}
	if conf == nil {
		return o, nil
	}
	for f, c := range []struct {
		name string
		v    *[]string
	}{{"conditionsV4", conf.ConditionsV4}, {"conditionsV6", conf.ConditionsV6}} {
		if c.v == nil {
			continue
		}
		for i, w := range *c.v {
			if w == "" || strings.ContainsFunc(w, isControl) {
				return o, cnierr.Field(fmt.Sprintf("%s[%d]", c.name, i), w, "must be one iptables argument: not empty, no control characters")
			}
		}
		o.cond[f] = slices.Clone(*c.v)
	}
	if conf.MarkMasqBit != nil {
		if b := *conf.MarkMasqBit; b < 0 || b > 31 {
			return o, cnierr.Field("markMasqBit", b, "must be between 0 and 31")
		}
		o.markBit = *conf.MarkMasqBit
	}
	if conf.ExternalSetMarkChain != nil {
		c := *conf.ExternalSetMarkChain
		if c == "" || len(c) > 28 || strings.ContainsFunc(c, func(r rune) bool { return r <= ' ' || r > '~' || r == '"' || r == '\\' }) {
			return o, cnierr.Field("externalSetMarkChain", c, "must be an iptables chain name (1-28 printable characters, no spaces or quotes)")
		}
		o.markChain = c
	}
	return o, nil
}

func isControl(r rune) bool { return r < ' ' || r == 0x7f }

// quoteWord renders one argument for iptables-restore, which splits a line
// on blanks and reads "…" as one word in which a backslash escapes the
// next byte. It quotes as iptables-save does (xtables_save_string): words
// of letters, digits, '-' and '_' stay bare; others are quoted, with '"',
// '\' and '\” escaped. So a comment reads back as it was written.
func quoteWord(w string) string {
	bare := w != "" && !strings.ContainsFunc(w, func(r rune) bool {
		return !(r == '-' || r == '_' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z')
	})
	if bare {
		return w
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `'`, `\'`).Replace(w) + `"`
}

// markTarget is what a rule does to a packet to masquerade.
func (o IPTOpts) markTarget() string {
	if o.markChain != "" {
		return "-j " + o.markChain // IPTOptsOf allows no blank, quote or backslash
	}
	m := fmt.Sprintf("%#x", uint32(1)<<o.markBit)
	return "-j MARK --set-xmark " + m + "/" + m
}

// masqRule is berth's BERTH-HP-MASQ rule for o, or "" when an external
// chain marks and its owner masquerades.
func (o IPTOpts) masqRule() string {
	if o.markChain != "" {
		return ""
	}
	m := fmt.Sprintf("%#x", uint32(1)<<o.markBit)
	return "-m mark --mark " + m + "/" + m + ` -m comment --comment "berth portmap" -j MASQUERADE`
}

// IPTWant is what one attachment wants in one family's nat table. Specs
// are written as iptables-save prints them, so that Check can compare text.
type IPTWant struct {
	v6      bool
	chain   string
	body    []string // the rules of chain, in order; none: nothing in this family
	jump    string   // the IPTHostports rule into chain
	comment string   // the jump's comment: the holder
	cond    bool     // jump holds the config's conditions (saved in iptables' own order)
	masq    string   // the IPTMasq rule this needs, or ""
}

// V6 reports whether w is of the IPv6 family (ip6tables).
func (w IPTWant) V6() bool { return w.v6 }

// Empty reports whether w has no rule: the attachment has no mapping in
// w's family.
func (w IPTWant) Empty() bool { return len(w.body) == 0 }

// Plan computes a's rules in family v6. Per mapping, host-address ones
// first (they win over a wildcard of the same port): the marks for
// masquerade, then the DNAT.
//
//	-A BERTH-DN-h [-s <container subnet>|127.0.0.0/8] [-d <host address>] -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000
//	-A BERTH-DN-h [-d <host address>] -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.5:80
func (o IPTOpts) Plan(a Attachment, v6 bool) (IPTWant, error) {
	if err := validOwner(a.Owner); err != nil {
		return IPTWant{}, err
	}
	w := IPTWant{v6: v6, chain: IPTChain(a.Owner), comment: holderComment(a)}
	t, ok := a.Target(v6)
	if !ok {
		return w, nil
	}
	var ms []Mapping
	for _, m := range a.Mappings {
		if !validProto(m.Proto) || m.Port == 0 || m.ContainerPort == 0 {
			return IPTWant{}, fmt.Errorf("portmap: mapping %s -> %d of container %s is not valid", m.Key, m.ContainerPort, a.Owner.ContainerID)
		}
		if v4ok, v6ok := m.Families(); (v6 && v6ok) || (!v6 && v4ok) {
			ms = append(ms, m)
		}
	}
	if len(ms) == 0 {
		return w, nil
	}
	slices.SortStableFunc(ms, func(x, y Mapping) int { return boolInt(wildcard(x.Key)) - boolInt(wildcard(y.Key)) })
	var srcs []string
	switch {
	case a.MasqAll:
		srcs = []string{""}
	case a.SNAT:
		srcs = []string{srcMatch(t.Masked())}
		if !v6 {
			srcs = append(srcs, srcMatch(netip.MustParsePrefix("127.0.0.0/8")))
		}
	}
	if len(srcs) > 0 {
		w.masq = o.masqRule()
	}
	var protos []string
	var ports []string
	for _, m := range ms {
		match := fmt.Sprintf("-p %s -m %s --dport %d", m.Proto, m.Proto, m.Port)
		if !wildcard(m.Key) {
			match = fmt.Sprintf("-d %s %s", netip.PrefixFrom(m.Addr, m.Addr.BitLen()), match)
		}
		for _, s := range srcs {
			w.body = append(w.body, s+match+" "+o.markTarget())
		}
		to := netip.AddrPortFrom(t.Addr(), m.ContainerPort)
		w.body = append(w.body, match+" -j DNAT --to-destination "+to.String())
		if !slices.Contains(protos, m.Proto) {
			protos = append(protos, m.Proto)
		}
		if p := strconv.Itoa(int(m.Port)); !slices.Contains(ports, p) {
			ports = append(ports, p)
		}
	}
	var jump []string
	for _, c := range o.cond[boolInt(v6)] {
		jump = append(jump, quoteWord(c))
		w.cond = true
	}
	// Only packets to the attachment's ports enter its chain, when one
	// match can say which.
	if len(protos) == 1 && len(ports) <= iptMaxPorts {
		jump = append(jump, "-p", protos[0], "-m", "multiport", "--dports", strings.Join(ports, ","))
	}
	// The owner's comment comes last: a condition may hold a comment of
	// its own, and the save reader (iptables.ParseSave) keeps the last.
	jump = append(jump, "-m", "comment", "--comment", quoteWord(w.comment), "-j", w.chain)
	w.jump = strings.Join(jump, " ")
	return w, nil
}

// validOwner checks the owner's strings, which go into the jump's comment.
// pkg/config has checked them in the plugin; this guards other callers.
func validOwner(o owner.Owner) error {
	_, err := config.Attachment(o.Network, o.ContainerID, o.IfName)
	return err
}

func wildcard(k Key) bool { return !k.Addr.IsValid() || k.Addr.IsUnspecified() }

// srcMatch is "-s <prefix> ", or "" for a prefix that matches everything
// (iptables-save prints no -s for it).
func srcMatch(p netip.Prefix) string {
	if p.Bits() == 0 {
		return ""
	}
	return "-s " + p.String() + " "
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// IPTFamilies are the address families (false: IPv4, true: IPv6) a has a
// container address in, where its rules can be; both when it has none (a
// minimal record).
func IPTFamilies(a Attachment) []bool {
	var out []bool
	for _, v6 := range []bool{false, true} {
		if _, ok := a.Target(v6); ok {
			out = append(out, v6)
		}
	}
	if len(out) == 0 {
		return []bool{false, true}
	}
	return out
}

// IPTSaved is one family's nat table as iptables-save printed it.
type IPTSaved struct {
	chains map[string]bool
	rules  []iptables.Rule
}

// ParseIPTSaved reads the output of iptables-save -t nat.
func ParseIPTSaved(out string) (IPTSaved, error) {
	t, err := iptables.ParseSave(out)
	if err != nil {
		return IPTSaved{}, err
	}
	s := IPTSaved{chains: map[string]bool{}, rules: t.Rules}
	for _, c := range t.Chains {
		s.chains[c] = true
	}
	return s, nil
}

// has reports whether chain holds a rule saved as spec.
func (s IPTSaved) has(chain, spec string) bool {
	return slices.ContainsFunc(s.rules, func(r iptables.Rule) bool { return r.Chain == chain && r.Spec == spec })
}

// jumps reports whether chain has a rule jumping to target.
func (s IPTSaved) jumps(chain, target string) bool {
	return slices.ContainsFunc(s.rules, func(r iptables.Rule) bool { return r.Chain == chain && r.Jump == target })
}

// jumpsTo returns the rules, in any chain, that jump to target.
func (s IPTSaved) jumpsTo(target string) []iptables.Rule {
	var out []iptables.Rule
	for _, r := range s.rules {
		if r.Jump == target {
			out = append(out, r)
		}
	}
	return out
}

// keeps reports whether the saved jumps into w's chain are just the one
// w wants. With conditions, iptables-save may print them otherwise than
// the config wrote them: the jump is then written afresh.
func (w IPTWant) keeps(s IPTSaved) bool {
	js := s.jumpsTo(w.chain)
	return !w.cond && len(js) == 1 && js[0].Chain == IPTHostports && js[0].Spec == w.jump
}

// IPTPayload is one iptables-restore --noflush input for the nat table.
type IPTPayload []string

func (p *IPTPayload) add(format string, args ...any) { *p = append(*p, fmt.Sprintf(format, args...)) }

// String renders p, or "" when it changes nothing.
func (p IPTPayload) String() string {
	if len(p) == 0 {
		return ""
	}
	return "*nat\n" + strings.Join(p, "\n") + "\nCOMMIT\n"
}

// PlanIPTAdd writes w over what s holds: the shared chains and their jumps
// when missing, w's chain declared (with --noflush that creates or flushes
// it) and filled, and its one jump. Within the payload a chain is filled
// before a rule jumps to it.
func PlanIPTAdd(w IPTWant, s IPTSaved) IPTPayload {
	if len(w.body) == 0 {
		return PlanIPTRemove(w.chain, s)
	}
	var p IPTPayload
	if !s.chains[IPTHostports] {
		p.add(":%s - [0:0]", IPTHostports)
	}
	if w.masq != "" && !s.chains[IPTMasq] {
		p.add(":%s - [0:0]", IPTMasq)
	}
	p.add(":%s - [0:0]", w.chain)
	for _, r := range w.body {
		p.add("-A %s %s", w.chain, r)
	}
	for _, c := range []string{"PREROUTING", "OUTPUT"} {
		if !s.jumps(c, IPTHostports) {
			p.add("-I %s %s", c, iptBaseJump)
		}
	}
	if w.masq != "" {
		if !s.has(IPTMasq, w.masq) {
			p.add("-A %s %s", IPTMasq, w.masq)
		}
		if !s.jumps("POSTROUTING", IPTMasq) {
			p.add("-I POSTROUTING %s", iptMasqJump)
		}
	}
	if !w.keeps(s) {
		for _, r := range s.jumpsTo(w.chain) {
			p.add("-D %s %s", r.Chain, r.Spec)
		}
		p.add("-A %s %s", IPTHostports, w.jump)
	}
	return p
}

// PlanIPTRemove deletes every jump to chain, then chain. The shared chains
// stay, as upstream's do: other attachments (or the next) use them.
func PlanIPTRemove(chain string, s IPTSaved) IPTPayload {
	var p IPTPayload
	for _, r := range s.jumpsTo(chain) {
		p.add("-D %s %s", r.Chain, r.Spec)
	}
	if s.chains[chain] {
		p.add("-F %s", chain)
		p.add("-X %s", chain)
	}
	return p
}

// Check names the first piece of w missing from s, the nat table of w's
// family; o is the attachment's owner, named in the message.
func (w IPTWant) Check(s IPTSaved, o owner.Owner) error {
	if len(w.body) == 0 {
		return nil
	}
	tool := "iptables"
	if w.v6 {
		tool = "ip6tables"
	}
	who := fmt.Sprintf("container %s (interface %s, network %s)", o.ContainerID, o.IfName, o.Network)
	if !s.chains[IPTHostports] {
		return fmt.Errorf("portmap: %s: chain %s is missing from the nat table", tool, IPTHostports)
	}
	for _, c := range []string{"PREROUTING", "OUTPUT"} {
		if !s.jumps(c, IPTHostports) {
			return fmt.Errorf("portmap: %s: chain %s has no jump to %s", tool, c, IPTHostports)
		}
	}
	if !s.chains[w.chain] {
		return fmt.Errorf("portmap: %s: chain %s of %s is missing", tool, w.chain, who)
	}
	found := slices.ContainsFunc(s.jumpsTo(w.chain), func(r iptables.Rule) bool {
		return r.Chain == IPTHostports && r.Comment == w.comment && (w.cond || r.Spec == w.jump)
	})
	if !found {
		return fmt.Errorf("portmap: %s: rule \"-A %s %s\" of %s is missing", tool, IPTHostports, w.jump, who)
	}
	for _, r := range w.body {
		if !s.has(w.chain, r) {
			return fmt.Errorf("portmap: %s: rule \"-A %s %s\" of %s is missing", tool, w.chain, r, who)
		}
	}
	if w.masq == "" {
		return nil
	}
	if !s.chains[IPTMasq] {
		return fmt.Errorf("portmap: %s: chain %s is missing from the nat table", tool, IPTMasq)
	}
	if !s.has(IPTMasq, w.masq) {
		return fmt.Errorf("portmap: %s: rule \"-A %s %s\" is missing", tool, IPTMasq, w.masq)
	}
	if !s.jumps("POSTROUTING", IPTMasq) {
		return fmt.Errorf("portmap: %s: chain POSTROUTING has no jump to %s", tool, IPTMasq)
	}
	return nil
}
