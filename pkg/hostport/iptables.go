package hostport

import (
	"errors"
	"fmt"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport/portplan"
	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/netns"
)

// IPTables is the iptables datapath: the same behaviour as NFT, in the nat
// table of iptables and ip6tables, laid out as upstream portmap lays it out
// (marks for masquerade, one chain per attachment):
//
//	*nat
//	-A PREROUTING  -m addrtype --dst-type LOCAL -m comment --comment "berth portmap" -j BERTH-HOSTPORTS
//	-A OUTPUT      -m addrtype --dst-type LOCAL -m comment --comment "berth portmap" -j BERTH-HOSTPORTS
//	-A POSTROUTING -m comment --comment "berth portmap" -j BERTH-HP-MASQ
//	-A BERTH-HP-MASQ -m mark --mark 0x2000/0x2000 -m comment --comment "berth portmap" -j MASQUERADE
//	# one jump per attachment, with the config's conditions and its owner:
//	-A BERTH-HOSTPORTS [conditions] [-p tcp -m multiport --dports 8080,8443] -m comment --comment "berth id=<cid> if=<if> net=<net>" -j BERTH-DN-<h>
//	# the attachment's chain, host-address mappings first:
//	-A BERTH-DN-<h> -s 10.88.0.0/16 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000   # hairpin (snat)
//	-A BERTH-DN-<h> -s 127.0.0.0/8 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000    # localhost, IPv4 (snat)
//	-A BERTH-DN-<h> -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.5:80
//	-A BERTH-DN-<h> -d 10.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.88.0.5:5353   # hostIP
//
// <h> is 12 hex digits of SHA-256(network NUL containerID NUL ifName)
// (portplan.IPTChain). With masqAll one unconditional mark per mapping
// replaces the hairpin and localhost ones. markMasqBit picks the mark (13
// by default, as upstream); with externalSetMarkChain the marks jump to
// that chain (e.g. KUBE-MARK-MASQ) and berth writes no BERTH-HP-MASQ rule,
// as that chain's owner masquerades what it marks. The rules are
// portplan's plans (IPTOpts.Plan, PlanIPTAdd, PlanIPTRemove); this type
// reads the tables and runs the payloads.
//
// The shared chains and their jumps are made by the first Add that needs
// them and never removed, as upstream's. Add and Remove read the family's
// nat table (iptables-save -t nat) and write one iptables-restore
// --noflush payload per family, so each is atomic per family. An
// attachment's chain is declared (created or flushed) and written whole;
// its jump is kept when it is already the one wanted, else every jump to
// the chain is deleted and one appended. Remove deletes what it finds of
// the attachment (jumps to its chain, then the chain) from the
// attachment's owner alone, so a DEL with another config, a second DEL
// and a DEL after a crashed ADD all succeed.
type IPTables struct {
	ns   *netns.NS
	cmds iptables.Commands
	opts portplan.IPTOpts
	err  error // a bad iptables option in the config: Add and Check report it
}

// NewIPTables returns the iptables datapath of n, running cmds (e.g.
// iptables.Default) there, with conf's conditions and marks; conf may be
// nil. A bad option is reported by Add and Check, not by Remove, so that
// DEL works whatever the config says.
func NewIPTables(n *netns.NS, conf *config.Portmap, cmds iptables.Commands) *IPTables {
	o, err := portplan.IPTOptsOf(conf)
	return &IPTables{ns: n, cmds: cmds, opts: o, err: err}
}

// Add writes a's rules, one restore per family it has an address in; a
// family with no mapping of a is cleared of a's rules (a retry that
// dropped it).
//
// Equivalent: iptables-save -t nat; iptables-restore --noflush -w <<< '*nat
// :BERTH-DN-<h> - [0:0]
// -A BERTH-DN-<h> -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.88.0.5:80
// -A BERTH-HOSTPORTS … -j BERTH-DN-<h>
// COMMIT'
func (d *IPTables) Add(a Attachment) error {
	return d.eachFamily(a, true, func(w portplan.IPTWant, s portplan.IPTSaved) error {
		return d.restore(w.V6(), portplan.PlanIPTAdd(w, s))
	})
}

// Remove deletes a's jumps and chain in each family it has an address in.
// What is absent is not an error.
//
// Equivalent: iptables-save -t nat; iptables-restore --noflush -w <<< '*nat
// -D BERTH-HOSTPORTS … -j BERTH-DN-<h>
// -F BERTH-DN-<h>
// -X BERTH-DN-<h>
// COMMIT'
func (d *IPTables) Remove(a Attachment) error {
	chain := portplan.IPTChain(a.Owner)
	var errs []error
	for _, v6 := range portplan.IPTFamilies(a) {
		s, err := d.save(v6)
		if err == nil {
			err = d.restore(v6, portplan.PlanIPTRemove(chain, s))
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Check names the first of a's rules missing from the nat tables. The
// conditions in a jump are not compared: iptables-save prints matches in
// its own order and form.
//
// Equivalent: iptables-save -t nat; ip6tables-save -t nat
func (d *IPTables) Check(a Attachment) error {
	return d.eachFamily(a, false, func(w portplan.IPTWant, s portplan.IPTSaved) error { return w.Check(s, a.Owner) })
}

// eachFamily plans a in each family it has an address in, reads that
// family's nat table and calls fn; without all, only for the families
// where a has rules.
func (d *IPTables) eachFamily(a Attachment, all bool, fn func(w portplan.IPTWant, s portplan.IPTSaved) error) error {
	if d.err != nil {
		return d.err
	}
	for _, v6 := range portplan.IPTFamilies(a) {
		w, err := d.opts.Plan(a, v6)
		if err != nil {
			return err
		}
		if w.Empty() && !all {
			continue
		}
		s, err := d.save(v6)
		if err != nil {
			return err
		}
		if err := fn(w, s); err != nil {
			return err
		}
	}
	return nil
}

// save reads the family's nat table.
//
// Equivalent: ip netns exec $n iptables-save -t nat
func (d *IPTables) save(v6 bool) (portplan.IPTSaved, error) {
	name := d.cmds.Save(v6)
	out, err := d.ns.Run("", name, "-t", "nat")
	if err != nil {
		return portplan.IPTSaved{}, fmt.Errorf("portmap: %w", err)
	}
	s, err := portplan.ParseIPTSaved(out)
	if err != nil {
		return portplan.IPTSaved{}, fmt.Errorf("portmap: %s: %w", name, err)
	}
	return s, nil
}

// restore applies p, if it changes anything, atomically; -w waits for the
// xtables lock other iptables users hold.
//
// Equivalent: ip netns exec $n iptables-restore --noflush -w < p
func (d *IPTables) restore(v6 bool, p portplan.IPTPayload) error {
	if len(p) == 0 {
		return nil
	}
	if _, err := d.ns.Run(p.String(), d.cmds.Restore(v6), "--noflush", "-w"); err != nil {
		return fmt.Errorf("portmap: %w", err)
	}
	return nil
}
