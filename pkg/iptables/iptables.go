// Package iptables is what berth's iptables backends (nat's masquerade,
// hostport's DNAT) share about the iptables programs: which ones to run
// (Commands) and how to read what iptables-save prints. It is pure: the
// programs run in a namespace through netns.NS.Run.
package iptables

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
)

// Commands names the programs an iptables backend runs, looked up in PATH
// at each call.
type Commands struct {
	Restore4, Save4 string // iptables-restore, iptables-save
	Restore6, Save6 string // ip6tables-restore, ip6tables-save
}

// Default are whatever "iptables" is on this host (legacy or nf_tables
// flavoured), so that berth's rules show where the operator looks.
var Default = Commands{
	Restore4: "iptables-restore", Save4: "iptables-save",
	Restore6: "ip6tables-restore", Save6: "ip6tables-save",
}

// Legacy forces the legacy xtables flavour.
var Legacy = Commands{
	Restore4: "iptables-legacy-restore", Save4: "iptables-legacy-save",
	Restore6: "ip6tables-legacy-restore", Save6: "ip6tables-legacy-save",
}

// Restore is the restore program of a family.
func (c Commands) Restore(v6 bool) string {
	if v6 {
		return c.Restore6
	}
	return c.Restore4
}

// Save is the save program of a family.
func (c Commands) Save(v6 bool) string {
	if v6 {
		return c.Save6
	}
	return c.Save4
}

// Programs are the four programs, for a caller that looks them up.
func (c Commands) Programs() []string { return []string{c.Restore4, c.Save4, c.Restore6, c.Save6} }

// Rule is one "-A" line of iptables-save, with the fields berth reads.
type Rule struct {
	Chain   string
	Spec    string       // the line after "-A <chain> ", as saved
	Src     netip.Prefix // -s
	Dst     netip.Prefix // -d
	DstNot  bool         // ! -d
	Comment string       // -m comment --comment
	Jump    string       // -j
}

// Table is one table of an iptables-save run: its chains and rules in order.
type Table struct {
	Chains []string
	Rules  []Rule
}

// ParseSave reads "iptables-save -t nat" output. It is outside input: any
// tool may have written the table. Rules berth cannot read are kept with
// zero fields; lines outside "*nat … COMMIT" are ignored.
func ParseSave(out string) (Table, error) {
	var nt Table
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
func parseRule(line string) (Rule, error) {
	chain, spec, _ := strings.Cut(line, " ")
	r := Rule{Chain: chain, Spec: spec}
	words, err := SplitWords(spec)
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

// SplitWords splits a saved rule as iptables-restore would: on spaces,
// with "double quotes" in which a backslash escapes the next byte.
func SplitWords(s string) ([]string, error) {
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
