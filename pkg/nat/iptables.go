package nat

import (
	"errors"
	"fmt"

	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// NewIPTables returns the iptables backend running cmds in n. It does not
// look for them: a missing program is reported (wrapping exec.ErrNotFound)
// by the first call that needs it.
func NewIPTables(n *netns.NS, cmds iptables.Commands) Backend { return iptBackend{ns: n, cmds: cmds} }

type iptBackend struct {
	ns   *netns.NS
	cmds iptables.Commands
}

func (b iptBackend) restoreCmd(f family) string { return b.cmds.Restore(f == v6) }

func (b iptBackend) saveCmd(f family) string { return b.cmds.Save(f == v6) }

// Ensure writes m's POSTROUTING rules and the network chain, one restore
// payload per address family that changes.
//
// Equivalent: iptables-restore --noflush -w <<< '*nat
// :BERTH-MASQ-$h - [0:0] … -A POSTROUTING -s 10.22.0.5/32 -m comment --comment "…" -j BERTH-MASQ-$h
// COMMIT'
// Add is Ensure: the rules are found by reading the nat table either way.
func (b iptBackend) Add(m Masq) error { return b.Ensure(m) }

func (b iptBackend) Ensure(m Masq) error {
	want, err := validateMasq(m)
	if err != nil {
		return err
	}
	own := StoredOwner(m.Owner)
	return withLock(func() error {
		return b.change(m.Owner.Network, func(cur []entry) change { return planEnsure(cur, want, own) })
	})
}

// Delete removes o's POSTROUTING rules, and the network chain when no
// container of the network is left.
//
// Equivalent: iptables-restore --noflush -w <<< '*nat
// -D POSTROUTING -s 10.22.0.5/32 -m comment --comment "…" -j BERTH-MASQ-$h
// COMMIT'
func (b iptBackend) Delete(o owner.Owner) error {
	if err := validateOwner(o); err != nil {
		return err
	}
	own := StoredOwner(o)
	return withLock(func() error {
		return b.change(o.Network, func(cur []entry) change { return planDelete(cur, own) })
	})
}

// List reads the network's POSTROUTING rules of both families, under the
// lock so that the two families are one snapshot.
//
// Equivalent: iptables-save -t nat; ip6tables-save -t nat
func (b iptBackend) List(network string) ([]Masq, error) {
	if network == "" {
		return nil, errors.New("iptables: list needs a network name")
	}
	var all []entry
	err := withLock(func() error {
		for _, f := range families {
			st, err := b.read(network, f)
			if err != nil {
				return err
			}
			all = append(all, st.Entries...)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return group(network, all), nil
}

// Check compares m with the saved nat tables.
//
// Equivalent: iptables-save -t nat; ip6tables-save -t nat
func (b iptBackend) Check(m Masq) error {
	want, err := validateMasq(m)
	if err != nil {
		return err
	}
	return withLock(func() error {
		for _, f := range families {
			if len(ofFamily(want, f)) == 0 {
				continue
			}
			st, err := b.read(m.Owner.Network, f)
			if err != nil {
				return err
			}
			if err := checkIPT(m.Owner.Network, f, st, want); err != nil {
				return err
			}
		}
		return nil
	})
}

// change reads both families, plans once over all of the network's entries
// and restores what changed; the caller holds the lock.
func (b iptBackend) change(network string, plan func(cur []entry) change) error {
	var sts [2]iptState
	var cur []entry
	for _, f := range families {
		st, err := b.read(network, f)
		if err != nil {
			return err
		}
		sts[f] = st
		cur = append(cur, st.Entries...)
	}
	c := plan(cur)
	var errs []error
	for _, f := range families {
		if p := planIPT(network, f, sts[f], c).payload(); p != "" {
			if err := b.restore(f, p); err != nil {
				errs = append(errs, fmt.Errorf("update network %q: %w", network, err))
			}
		}
	}
	return errors.Join(errs...)
}

// read saves family f's nat table and selects network's part.
//
// Equivalent: iptables-save -t nat
func (b iptBackend) read(network string, f family) (iptState, error) {
	out, err := b.ns.Run("", b.saveCmd(f), "-t", "nat")
	if err != nil {
		return iptState{}, fmt.Errorf("iptables backend: %w", err)
	}
	nt, err := iptables.ParseSave(out)
	if err != nil {
		return iptState{}, fmt.Errorf("%s: %w", b.saveCmd(f), err)
	}
	return iptNetwork(network, f, nt), nil
}

// restore applies one payload atomically; -w waits for the xtables lock
// that other iptables users hold.
//
// Equivalent: iptables-restore --noflush -w < payload
func (b iptBackend) restore(f family, payload string) error {
	if _, err := b.ns.Run(payload, b.restoreCmd(f), "--noflush", "-w"); err != nil {
		return fmt.Errorf("iptables backend: %w", err)
	}
	return nil
}
