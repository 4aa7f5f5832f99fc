// Package peerplan is the pure half of the overlay's data plane: which
// remote hosts a host programs (PlanPeers), the kernel entries that reach
// them (WantEntries: one route, permanent neighbour and FDB entry each,
// flannel's vxlan model) and the plan that brings a device's entries from
// what it holds to what is wanted (PlanSync). Entries and plans print as
// the text `ip route`, `ip neigh` and `bridge fdb` would show, which the
// tests compare. It is pure: plain values in and out; package vxlan reads
// and applies them in a namespace.
package peerplan

import (
	"cmp"
	"fmt"
	"net"
	"net/netip"
	"slices"
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

// PlanPeers turns the candidates (one per lease of a network, as the
// store returned them) into the peers of the host self. A candidate is not
// a peer when it is this host (same host name or same VTEP as self), when
// it is malformed (no IPv4 subnet or VTEP, a MAC that is not a unicast
// Ethernet address), or when its subnet overlaps self's or an earlier
// peer's, or its MAC is an earlier peer's (the store never hands out such
// leases; a corrupt store must not make the kernel state ambiguous). Of
// self only Host, VTEP and Subnet count; a zero Subnet is a host without a
// lease yet. Peers come out sorted by subnet, their subnets masked and
// their MACs normalised.
func PlanPeers(self Peer, candidates []Peer) []Peer {
	sorted := slices.Clone(candidates)
	slices.SortStableFunc(sorted, func(a, b Peer) int { return cmpPrefix(a.Subnet, b.Subnet) })
	var peers []Peer
	macs := map[string]bool{}
	for _, c := range sorted {
		if c.Host == self.Host || (self.VTEP.IsValid() && c.VTEP == self.VTEP) {
			continue
		}
		if !c.Subnet.IsValid() || !c.Subnet.Addr().Is4() || !c.VTEP.Is4() {
			continue
		}
		mac, ok := unicastMAC(c.MAC)
		if !ok || macs[mac] {
			continue
		}
		subnet := c.Subnet.Masked()
		if self.Subnet.IsValid() && subnet.Overlaps(self.Subnet) {
			continue
		}
		// The peers so far are disjoint and sorted by their first
		// address, so the last ends furthest: a subnet that overlaps
		// one of them overlaps it (one comparison, not one per peer).
		if n := len(peers); n > 0 && peers[n-1].Subnet.Overlaps(subnet) {
			continue
		}
		macs[mac] = true
		peers = append(peers, Peer{Host: c.Host, Subnet: subnet, VTEP: c.VTEP, MAC: mac})
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
