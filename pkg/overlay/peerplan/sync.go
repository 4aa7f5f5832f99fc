package peerplan

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// SyncStats counts what a sync changed, in kernel entries (routes,
// neighbours and FDB entries), and how many peers the device now reaches.
type SyncStats struct {
	Peers                    int
	Added, Replaced, Deleted int
}

// Changed reports whether the sync changed anything.
func (s SyncStats) Changed() bool { return s.Added+s.Replaced+s.Deleted > 0 }

// SyncPlan is what a sync of a device does, in the order it is to be
// done (vxlan.SyncPeers applies it so): stale entries go first (routes
// before the neighbours and FDB entries they use), then FDB entries,
// neighbours and routes are set (so a route appears only once what it
// needs is there).
type SyncPlan struct {
	DelRoutes []Route
	DelNeighs []Neigh
	DelFDB    []FDB
	SetFDB    []FDB
	SetNeighs []Neigh
	SetRoutes []Route
	Stats     SyncStats // what the plan changes, counted
}

// String renders the plan one step a line, "del " or "set " and the
// entry in ip syntax, in the order of the steps.
func (p SyncPlan) String() string {
	var b strings.Builder
	for _, r := range p.DelRoutes {
		fmt.Fprintf(&b, "del %s\n", r)
	}
	for _, n := range p.DelNeighs {
		fmt.Fprintf(&b, "del %s\n", n)
	}
	for _, f := range p.DelFDB {
		fmt.Fprintf(&b, "del %s\n", f)
	}
	for _, f := range p.SetFDB {
		fmt.Fprintf(&b, "set %s\n", f)
	}
	for _, n := range p.SetNeighs {
		fmt.Fprintf(&b, "set %s\n", n)
	}
	for _, r := range p.SetRoutes {
		fmt.Fprintf(&b, "set %s\n", r)
	}
	return b.String()
}

// PlanSync compares the desired peers with what the device holds (have). Entries
// inside local (this host's subnet) are never touched, neither deleted nor
// set; neighbours that are not permanent are the kernel's and are left
// alone unless a peer needs their address.
func PlanSync(desired []Peer, have Entries, local netip.Prefix) SyncPlan {
	inLocal := func(a netip.Addr) bool { return local.IsValid() && local.Masked().Contains(a) }
	var peers []Peer
	for _, p := range desired {
		if local.IsValid() && p.Subnet.Overlaps(local) {
			continue // it would take this host's own traffic
		}
		peers = append(peers, p)
	}
	want := WantEntries(peers)
	var p SyncPlan
	p.Stats.Peers = len(peers)

	// Routes, keyed by destination; the desired one has metric 0.
	haveRoutes := map[netip.Prefix][]Route{}
	for _, r := range have.Routes {
		if inLocal(r.Dst.Addr()) && r.Dst.Bits() >= local.Bits() {
			continue // a route inside this host's subnet: not the agent's
		}
		haveRoutes[r.Dst] = append(haveRoutes[r.Dst], r)
	}
	wantRoutes := map[netip.Prefix]bool{}
	for _, w := range want.Routes {
		wantRoutes[w.Dst] = true
		switch rs := haveRoutes[w.Dst]; {
		case slices.Contains(rs, w):
		case slices.ContainsFunc(rs, func(r Route) bool { return r.Metric == w.Metric }):
			p.SetRoutes = append(p.SetRoutes, w)
			p.Stats.Replaced++
		default:
			p.SetRoutes = append(p.SetRoutes, w)
			p.Stats.Added++
		}
	}
	for _, r := range have.Routes {
		rs, ours := haveRoutes[r.Dst]
		if !ours || !slices.Contains(rs, r) {
			continue // local
		}
		if !wantRoutes[r.Dst] || r.Metric != 0 {
			p.DelRoutes = append(p.DelRoutes, r)
			p.Stats.Deleted++
		}
	}

	// Neighbours, keyed by IP.
	haveNeighs := map[netip.Addr]Neigh{}
	for _, n := range have.Neighs {
		if !inLocal(n.IP) {
			haveNeighs[n.IP] = n
		}
	}
	wantNeighs := map[netip.Addr]bool{}
	for _, w := range want.Neighs {
		wantNeighs[w.IP] = true
		switch n, ok := haveNeighs[w.IP]; {
		case ok && n == w:
		case ok:
			p.SetNeighs = append(p.SetNeighs, w)
			p.Stats.Replaced++
		default:
			p.SetNeighs = append(p.SetNeighs, w)
			p.Stats.Added++
		}
	}
	for _, n := range have.Neighs {
		if n.Permanent && !inLocal(n.IP) && !wantNeighs[n.IP] {
			p.DelNeighs = append(p.DelNeighs, n)
			p.Stats.Deleted++
		}
	}

	// FDB entries, keyed by MAC. A MAC whose remote changed is deleted
	// and set again: the kernel's replace keeps other remotes of a MAC.
	wantFDB := map[string]netip.Addr{}
	for _, w := range want.FDB {
		wantFDB[w.MAC] = w.Dst
	}
	correct := map[string]bool{} // wanted MACs that already reach the right VTEP
	for _, f := range have.FDB {
		if dst, ok := wantFDB[f.MAC]; ok && dst == f.Dst {
			correct[f.MAC] = true
		}
	}
	kept, replaced := map[string]bool{}, map[string]bool{}
	for _, f := range have.FDB {
		dst, wanted := wantFDB[f.MAC]
		if wanted && dst == f.Dst && !kept[f.MAC] {
			kept[f.MAC] = true
			continue
		}
		p.DelFDB = append(p.DelFDB, f)
		if wanted && !correct[f.MAC] && !replaced[f.MAC] {
			replaced[f.MAC] = true // counted once, as a replacement, below
			continue
		}
		p.Stats.Deleted++
	}
	for _, w := range want.FDB {
		switch {
		case kept[w.MAC]:
		case replaced[w.MAC]:
			p.SetFDB = append(p.SetFDB, w)
			p.Stats.Replaced++
		default:
			p.SetFDB = append(p.SetFDB, w)
			p.Stats.Added++
		}
	}
	return p
}
