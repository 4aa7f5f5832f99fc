package vxlan

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// Peer is one remote host as this host programs it: its subnet is routed
// over the VXLAN device to its device's address (the subnet's network
// address), which resolves to its device's MAC, which the FDB sends to its
// VTEP.
type Peer struct {
	Host   string
	Subnet netip.Prefix // masked, e.g. 10.244.2.0/24
	VTEP   netip.Addr   // its underlay address
	MAC    string       // its VXLAN device's MAC, as net.HardwareAddr prints it
}

// Addr is the peer's device address: the next hop of its route and the IP
// of its neighbour entry.
func (p Peer) Addr() netip.Addr { return p.Subnet.Masked().Addr() }

func (p Peer) String() string {
	return fmt.Sprintf("%s %s vtep %s mac %s", p.Host, p.Subnet, p.VTEP, p.MAC)
}

// PlanPeers turns the leases of a network into the peers of the host that
// holds self. A lease is not a peer when it is this host's (same host name
// or same VTEP), when it is malformed (no IPv4 subnet or VTEP, a MAC that
// is not a unicast Ethernet address), or when its subnet overlaps this
// host's or an earlier peer's, or its MAC is an earlier peer's (the store
// never hands out such leases; a corrupt store must not make the kernel
// state ambiguous). Peers come out sorted by subnet.
func PlanPeers(self store.Lease, leases []store.Lease) []Peer {
	sorted := slices.Clone(leases)
	slices.SortStableFunc(sorted, func(a, b store.Lease) int { return cmpPrefix(a.Subnet, b.Subnet) })
	var peers []Peer
	macs := map[string]bool{}
	for _, l := range sorted {
		if l.Host == self.Host || (self.VTEP.IsValid() && l.VTEP == self.VTEP) {
			continue
		}
		if !l.Subnet.IsValid() || !l.Subnet.Addr().Is4() || !l.VTEP.Is4() {
			continue
		}
		mac, ok := unicastMAC(l.MAC)
		if !ok || macs[mac] {
			continue
		}
		subnet := l.Subnet.Masked()
		if self.Subnet.IsValid() && subnet.Overlaps(self.Subnet) {
			continue
		}
		if slices.ContainsFunc(peers, func(p Peer) bool { return p.Subnet.Overlaps(subnet) }) {
			continue
		}
		macs[mac] = true
		peers = append(peers, Peer{Host: l.Host, Subnet: subnet, VTEP: l.VTEP, MAC: mac})
	}
	return peers
}

// unicastMAC normalises s, an Ethernet MAC; ok is false for anything else,
// all zeros, or a multicast address.
func unicastMAC(s string) (string, bool) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 || hw[0]&1 != 0 || slices.Equal(hw, make(net.HardwareAddr, 6)) {
		return "", false
	}
	return hw.String(), true
}

func cmpPrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}

// Route is a main-table IPv4 route on the device.
type Route struct {
	Dst    netip.Prefix
	Via    netip.Addr
	Onlink bool
	Metric int
}

func (r Route) String() string {
	s := "route " + r.Dst.String()
	if r.Via.IsValid() {
		s += " via " + r.Via.String()
	}
	if r.Onlink {
		s += " onlink"
	}
	if r.Metric != 0 {
		s += fmt.Sprintf(" metric %d", r.Metric)
	}
	return s
}

// Neigh is an IPv4 neighbour entry on the device.
type Neigh struct {
	IP        netip.Addr
	MAC       string
	Permanent bool // nud permanent: the agent's; other states are the kernel's own
}

func (n Neigh) String() string {
	s := "neigh " + n.IP.String() + " lladdr " + n.MAC
	if n.Permanent {
		s += " permanent"
	}
	return s
}

// FDB is one remote of an FDB entry of the device: frames to MAC go in
// UDP to Dst.
type FDB struct {
	MAC string
	Dst netip.Addr
}

func (f FDB) String() string { return "fdb " + f.MAC + " dst " + f.Dst.String() }

// Entries is the overlay state of one device as the kernel holds it.
type Entries struct {
	Routes []Route
	Neighs []Neigh
	FDB    []FDB
}

// String renders e one entry a line, sorted, the way `ip route`, `ip neigh`
// and `bridge fdb` would show them: tests compare it with text.
func (e Entries) String() string {
	var lines []string
	for _, r := range e.Routes {
		lines = append(lines, r.String())
	}
	for _, n := range e.Neighs {
		lines = append(lines, n.String())
	}
	for _, f := range e.FDB {
		lines = append(lines, f.String())
	}
	slices.Sort(lines)
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// WantEntries is the state a device holds for exactly the peers.
func WantEntries(peers []Peer) Entries {
	var e Entries
	for _, p := range peers {
		e.Routes = append(e.Routes, Route{Dst: p.Subnet, Via: p.Addr(), Onlink: true})
		e.Neighs = append(e.Neighs, Neigh{IP: p.Addr(), MAC: p.MAC, Permanent: true})
		e.FDB = append(e.FDB, FDB{MAC: p.MAC, Dst: p.VTEP})
	}
	return e
}

// SyncStats counts what a sync changed, in kernel entries (routes,
// neighbours and FDB entries), and how many peers the device now reaches.
type SyncStats struct {
	Peers                    int
	Added, Replaced, Deleted int
}

// Changed reports whether the sync changed anything.
func (s SyncStats) Changed() bool { return s.Added+s.Replaced+s.Deleted > 0 }

// syncPlan is what SyncPeers does, in the order it does it: stale entries
// go first (routes before the neighbours and FDB entries they use), then
// FDB entries, neighbours and routes are set (so a route appears only once
// what it needs is there).
type syncPlan struct {
	delRoutes []Route
	delNeighs []Neigh
	delFDB    []FDB
	setFDB    []FDB
	setNeighs []Neigh
	setRoutes []Route
	stats     SyncStats
}

func (p syncPlan) String() string {
	var b strings.Builder
	for _, r := range p.delRoutes {
		fmt.Fprintf(&b, "del %s\n", r)
	}
	for _, n := range p.delNeighs {
		fmt.Fprintf(&b, "del %s\n", n)
	}
	for _, f := range p.delFDB {
		fmt.Fprintf(&b, "del %s\n", f)
	}
	for _, f := range p.setFDB {
		fmt.Fprintf(&b, "set %s\n", f)
	}
	for _, n := range p.setNeighs {
		fmt.Fprintf(&b, "set %s\n", n)
	}
	for _, r := range p.setRoutes {
		fmt.Fprintf(&b, "set %s\n", r)
	}
	return b.String()
}

// planSync compares the desired peers with what the device holds. Entries
// inside local (this host's subnet) are never touched, neither deleted nor
// set; neighbours that are not permanent are the kernel's and are left
// alone unless a peer needs their address.
func planSync(desired []Peer, have Entries, local netip.Prefix) syncPlan {
	inLocal := func(a netip.Addr) bool { return local.IsValid() && local.Masked().Contains(a) }
	var peers []Peer
	for _, p := range desired {
		if local.IsValid() && p.Subnet.Overlaps(local) {
			continue // it would take this host's own traffic
		}
		peers = append(peers, p)
	}
	want := WantEntries(peers)
	var p syncPlan
	p.stats.Peers = len(peers)

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
			p.setRoutes = append(p.setRoutes, w)
			p.stats.Replaced++
		default:
			p.setRoutes = append(p.setRoutes, w)
			p.stats.Added++
		}
	}
	for _, r := range have.Routes {
		rs, ours := haveRoutes[r.Dst]
		if !ours || !slices.Contains(rs, r) {
			continue // local
		}
		if !wantRoutes[r.Dst] || r.Metric != 0 {
			p.delRoutes = append(p.delRoutes, r)
			p.stats.Deleted++
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
			p.setNeighs = append(p.setNeighs, w)
			p.stats.Replaced++
		default:
			p.setNeighs = append(p.setNeighs, w)
			p.stats.Added++
		}
	}
	for _, n := range have.Neighs {
		if n.Permanent && !inLocal(n.IP) && !wantNeighs[n.IP] {
			p.delNeighs = append(p.delNeighs, n)
			p.stats.Deleted++
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
		p.delFDB = append(p.delFDB, f)
		if wanted && !correct[f.MAC] && !replaced[f.MAC] {
			replaced[f.MAC] = true // counted once, as a replacement, below
			continue
		}
		p.stats.Deleted++
	}
	for _, w := range want.FDB {
		switch {
		case kept[w.MAC]:
		case replaced[w.MAC]:
			p.setFDB = append(p.setFDB, w)
			p.stats.Replaced++
		default:
			p.setFDB = append(p.setFDB, w)
			p.stats.Added++
		}
	}
	return p
}
