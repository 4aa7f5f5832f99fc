package nat

import (
	"errors"
	"fmt"

	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/nat/natplan"
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

func (b iptBackend) restoreCmd(f natplan.Family) string { return b.cmds.Restore(f == natplan.V6) }

func (b iptBackend) saveCmd(f natplan.Family) string { return b.cmds.Save(f == natplan.V6) }

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
		return b.change(m.Owner.Network, func(cur []natplan.Entry) natplan.Change { return natplan.PlanEnsure(cur, want, own) })
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
		return b.change(o.Network, func(cur []natplan.Entry) natplan.Change { return natplan.PlanDelete(cur, own) })
	})
}

// DeleteAfter is Delete: the iptables programs hold no socket open.
func (b iptBackend) DeleteAfter(o owner.Owner, _ <-chan struct{}) error { return b.Delete(o) }

// List reads the network's POSTROUTING rules of both families, under the
// lock so that the two families are one snapshot.
//
// Equivalent: iptables-save -t nat; ip6tables-save -t nat
func (b iptBackend) List(network string) ([]Masq, error) {
	if network == "" {
		return nil, errors.New("iptables: list needs a network name")
	}
	var all []natplan.Entry
	err := withLock(func() error {
		for _, f := range natplan.Families {
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
		for _, f := range natplan.Families {
			if len(natplan.OfFamily(want, f)) == 0 {
				continue
			}
			st, err := b.read(m.Owner.Network, f)
			if err != nil {
				return err
			}
			if err := natplan.CheckIPT(m.Owner.Network, f, st, want); err != nil {
				return err
			}
		}
		return nil
	})
}

// change reads both families, plans once over all of the network's entries
// and restores what changed; the caller holds the lock.
func (b iptBackend) change(network string, plan func(cur []natplan.Entry) natplan.Change) error {
	var sts [2]natplan.IPTState
	var cur []natplan.Entry
	for _, f := range natplan.Families {
		st, err := b.read(network, f)
		if err != nil {
			return err
		}
		sts[f] = st
		cur = append(cur, st.Entries...)
	}
	c := plan(cur)
	var errs []error
	for _, f := range natplan.Families {
		if p := natplan.PlanIPT(network, f, sts[f], c).Payload(); p != "" {
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
func (b iptBackend) read(network string, f natplan.Family) (natplan.IPTState, error) {
	out, err := b.ns.Run("", b.saveCmd(f), "-t", "nat")
	if err != nil {
		return natplan.IPTState{}, fmt.Errorf("iptables backend: %w", err)
	}
	nt, err := iptables.ParseSave(out)
	if err != nil {
		return natplan.IPTState{}, fmt.Errorf("%s: %w", b.saveCmd(f), err)
	}
	return natplan.IPTNetwork(network, f, nt), nil
}

// restore applies one payload atomically; -w waits for the xtables lock
// that other iptables users hold.
//
// Equivalent: iptables-restore --noflush -w < payload
func (b iptBackend) restore(f natplan.Family, payload string) error {
	if _, err := b.ns.Run(payload, b.restoreCmd(f), "--noflush", "-w"); err != nil {
		return fmt.Errorf("iptables backend: %w", err)
	}
	return nil
}
