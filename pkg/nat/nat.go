// Package nat programs source NAT (masquerade) for container addresses, the
// bridge plugin's ipMasq, in the network namespace a Backend is made for.
//
// Two backends share one model. nftables talks netlink in-process (no nft
// binary): one table "inet berth-nat", and per network two sets and one rule
// per address family, so a packet's cost does not grow with the number of
// containers. iptables writes the nat table through iptables-restore
// --noflush: a chain per network and a POSTROUTING rule per container
// address. Each Ensure or Delete is one transaction (one netlink batch, or
// one restore payload per address family), taken under the flock
// /run/berth/lock/nat so that concurrent plugin processes never lose or
// duplicate an entry. It touches netfilter state (nftables over netlink, or
// the iptables programs run there) of the namespace it is given and that
// lock file, nothing else.
//
// Every kernel object carries its owner: set elements and POSTROUTING rules
// carry "berth p=<bits> if=<ifname> id=<container>" comments, network rules
// and chains carry "berth net=<network>". The pure parts (tags, names,
// plans, reading iptables-save output) are in package natplan, plain
// functions over plain values; this package reads the kernel into
// natplan's values and applies its plans.
package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/nat/natplan"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// Masq asks that traffic from each Addr's address to anything outside Addr's
// prefix (the container's subnet) and not multicast (224.0.0.0/4, ff00::/8)
// be masqueraded. An Addr is an address with its subnet length, for example
// 10.22.0.5/16.
type Masq struct {
	Owner owner.Owner
	Addrs []netip.Prefix
}

// Backend programs masquerade state in the namespace it was made for.
type Backend interface {
	// Ensure makes o's state equal to m: m's addresses are masqueraded,
	// addresses m.Owner held before and m no longer lists are dropped.
	// Re-running it gives the same kernel state.
	Ensure(m Masq) error
	// Add is Ensure for an owner that holds nothing yet, an ADD's case.
	// The nftables backend then writes m's elements without reading the
	// network's sets, so an ADD's cost does not grow with the number of
	// containers; it falls back to Ensure when the network's sets are not
	// there yet. An address another owner held moves to m's owner, as in
	// Ensure; other addresses m's owner held are not looked for.
	Add(m Masq) error
	// Delete removes exactly o's state; when there is none it returns nil.
	Delete(o owner.Owner) error
	// DeleteAfter is Delete for a caller that deletes a link of the same
	// namespace meanwhile and closes linkGone once that is done: the
	// nftables backend commits at once but keeps its netlink socket open
	// until then (see nftBackend.DeleteAfter). nil is Delete.
	DeleteAfter(o owner.Owner, linkGone <-chan struct{}) error
	// List reports what exists for network, one Masq per owner, sorted.
	// Owners are in stored form (see StoredOwner).
	List(network string) ([]Masq, error)
	// Check returns nil when m is fully in place, else an error naming the
	// first thing missing.
	Check(m Masq) error
}

// lockName is the flock (under /run/berth/lock) every writer of NAT state
// holds; both backends share it so that a switch of backend cannot race.
const lockName = "nat"

// lockTimeout bounds the wait for lockName; a timeout wraps lock.ErrTimeout.
const lockTimeout = 10 * time.Second

// New returns the backend called name (config.BackendNFTables, also for
// "", or config.BackendIPTables) acting in n. It does not touch the
// kernel; a missing iptables binary is reported by the first call that
// needs it.
func New(n *netns.NS, name string) (Backend, error) {
	switch name {
	case "", config.BackendNFTables:
		return nftBackend{ns: n}, nil
	case config.BackendIPTables:
		return NewIPTables(n, iptables.Default), nil
	}
	return nil, fmt.Errorf("nat backend %q: must be %q or %q", name, config.BackendNFTables, config.BackendIPTables)
}

// Available reports whether backend name can run here: nftables always
// (netlink in-process), iptables when its restore and save programs exist
// for both families. DEL and GC sweep every available backend, since the
// config's backend may have changed since the ADD.
//
// Equivalent: command -v iptables-restore iptables-save ip6tables-restore ip6tables-save
func Available(name string) bool {
	switch name {
	case "", config.BackendNFTables:
		return true
	case config.BackendIPTables:
		for _, bin := range iptables.Default.Programs() {
			if _, err := exec.LookPath(bin); err != nil {
				return false
			}
		}
		return true
	}
	return false
}

// Backends are the backend names, in the order DEL and GC sweep them.
var Backends = []string{config.BackendNFTables, config.BackendIPTables}

// Detect returns "iptables" when n already does NAT through legacy
// xtables (its ip_tables_names lists "nat") and iptables-restore is on
// PATH; else "nftables". Mixing a legacy nat table with nftables nat
// chains works, but an operator reading one tool's output would miss the
// other's rules.
//
// Equivalent: ip netns exec $n grep -qx nat /proc/net/ip_tables_names && command -v iptables-restore
func Detect(n *netns.NS) string {
	var names []byte
	_ = n.Do(func() error {
		var err error
		names, err = os.ReadFile("/proc/thread-self/net/ip_tables_names")
		return err
	})
	if !slices.Contains(strings.Fields(string(names)), "nat") {
		return config.BackendNFTables
	}
	if _, err := exec.LookPath(iptables.Default.Restore4); err != nil {
		return config.BackendNFTables
	}
	return config.BackendIPTables
}

// StoredOwner returns o as List reports it: a container ID whose escaped
// form is longer than 64 bytes is kept as its first bytes, "~" and 16 hex
// digits of its SHA-256. StoredOwner(StoredOwner(o)) == StoredOwner(o), and
// Delete, Check and Ensure accept either form. GC compares the owners List
// returns with StoredOwner of the attachments it keeps. It is
// natplan.StoredOwner, kept here so that callers of a Backend need only nat.
func StoredOwner(o owner.Owner) owner.Owner { return natplan.StoredOwner(o) }

// validateOwner checks the fields every tag needs. The plugin has validated
// them already (pkg/config); this guards against a caller that did not.
func validateOwner(o owner.Owner) error {
	switch {
	case o.Network == "":
		return errors.New("owner has no network name")
	case o.ContainerID == "":
		return fmt.Errorf("owner in network %q has no container id", o.Network)
	case o.IfName == "" || len(o.IfName) > natplan.MaxIfName:
		return fmt.Errorf("owner %s: interface name %q must be 1 to %d bytes", o.ContainerID, o.IfName, natplan.MaxIfName)
	}
	return nil
}

// validateMasq checks m and returns its entries in stored form, one per
// address; a repeated address is an error.
func validateMasq(m Masq) ([]natplan.Entry, error) {
	if err := validateOwner(m.Owner); err != nil {
		return nil, err
	}
	o := StoredOwner(m.Owner)
	out := make([]natplan.Entry, 0, len(m.Addrs))
	for _, p := range m.Addrs {
		if !p.IsValid() {
			return nil, fmt.Errorf("masquerade for %s/%s: invalid address %v", o.ContainerID, o.IfName, p)
		}
		if p.Addr().Is4In6() {
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
			if !p.IsValid() {
				return nil, fmt.Errorf("masquerade for %s/%s: invalid address %v", o.ContainerID, o.IfName, p)
			}
		}
		if p.Addr().Zone() != "" {
			return nil, fmt.Errorf("masquerade for %s/%s: address %v has a zone", o.ContainerID, o.IfName, p)
		}
		for _, e := range out {
			if e.Addr.Addr() == p.Addr() {
				return nil, fmt.Errorf("masquerade for %s/%s: address %v given twice", o.ContainerID, o.IfName, p.Addr())
			}
		}
		out = append(out, natplan.Entry{Owner: o, Addr: p})
	}
	return out, nil
}

// group turns a network's entries into one Masq per owner, sorted.
func group(network string, es []natplan.Entry) []Masq {
	es = slices.Clone(es)
	natplan.SortEntries(es)
	var out []Masq
	for _, e := range es {
		o := owner.Owner{Network: network, ContainerID: e.Owner.ContainerID, IfName: e.Owner.IfName}
		if n := len(out); n > 0 && out[n-1].Owner == o {
			out[n-1].Addrs = append(out[n-1].Addrs, e.Addr)
			continue
		}
		out = append(out, Masq{Owner: o, Addrs: []netip.Prefix{e.Addr}})
	}
	return out
}

// withLock runs fn holding the NAT flock.
//
// Equivalent: flock -w 10 /run/berth/lock/nat …
func withLock(fn func() error) error {
	l, err := lock.Acquire(lockName, lockTimeout)
	if err != nil {
		return fmt.Errorf("nat: %w", err)
	}
	err = fn()
	if uerr := l.Unlock(); uerr != nil {
		err = errors.Join(err, fmt.Errorf("nat: release lock: %w", uerr))
	}
	return err
}
