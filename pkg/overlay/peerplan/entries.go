package peerplan

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

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
