package nat

// What other iptables users in berth (pkg/hostport's portmap datapath) take
// from this backend rather than write again: the runner and the
// iptables-save reader.

// SavedRule is one "-A" line of iptables-save: its chain, the text after
// "-A <chain> " as saved, and the comment and jump target in it.
type SavedRule struct {
	Chain, Spec, Comment, Jump string
}

// ParseNATSave reads "iptables-save -t nat" output, outside input: the
// chains the table declares and its rules in order. Lines outside
// "*nat … COMMIT" are ignored.
func ParseNATSave(out string) (chains []string, rules []SavedRule, err error) {
	nt, err := parseSave(out)
	if err != nil {
		return nil, nil, err
	}
	rules = make([]SavedRule, len(nt.Rules))
	for i, r := range nt.Rules {
		rules[i] = SavedRule{Chain: r.Chain, Spec: r.Spec, Comment: r.Comment, Jump: r.Jump}
	}
	return nt.Chains, rules, nil
}

// RunIPTables runs the iptables program name (looked up in PATH) with
// stdin and args in the calling thread's network namespace and returns its
// output. Its error names the command and carries its stderr and stdin.
//
// Equivalent: name args… < stdin
func RunIPTables(name, stdin string, args ...string) (string, error) {
	return run(name, stdin, args...)
}
