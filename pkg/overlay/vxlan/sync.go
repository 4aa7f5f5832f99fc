package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/overlay/peerplan"
)

// Entries reads what the device holds: its IPv4 main-table routes (except
// the kernel's own, made for addresses), IPv4 neighbours and FDB entries
// that have a remote.
//
// Equivalent: ip route show dev $dev; ip neigh show dev $dev; bridge fdb show dev $dev
func Entries(n *netns.NS, dev Device) (peerplan.Entries, error) {
	h := n.Netlink()
	var e peerplan.Entries
	routes, err := netns.RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_V4,
			&netlink.Route{LinkIndex: dev.Index, Table: unix.RT_TABLE_MAIN},
			netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return peerplan.Entries{}, fmt.Errorf("list routes of vxlan %q: %w", dev.Name, err)
	}
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		dst, ok := cidr.Prefix(r.Dst)
		if !ok {
			dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
		rt := peerplan.Route{Dst: dst, Onlink: r.Flags&int(netlink.FLAG_ONLINK) != 0, Metric: r.Priority}
		if gw, ok := cidr.Addr(r.Gw); ok {
			rt.Via = gw
		}
		e.Routes = append(e.Routes, rt)
	}
	neighs, err := netns.RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(dev.Index, netlink.FAMILY_V4) })
	if err != nil {
		return peerplan.Entries{}, fmt.Errorf("list neighbours of vxlan %q: %w", dev.Name, err)
	}
	for _, nb := range neighs {
		ip, ok := cidr.Addr(nb.IP)
		if !ok {
			continue
		}
		e.Neighs = append(e.Neighs, peerplan.Neigh{IP: ip, MAC: nb.HardwareAddr.String(), Permanent: nb.State&netlink.NUD_PERMANENT != 0})
	}
	fdb, err := netns.RetryDump(func() ([]netlink.Neigh, error) { return h.NeighList(dev.Index, unix.AF_BRIDGE) })
	if err != nil {
		return peerplan.Entries{}, fmt.Errorf("list fdb of vxlan %q: %w", dev.Name, err)
	}
	for _, f := range fdb {
		dst, ok := cidr.Addr(f.IP)
		if !ok {
			continue // not a remote: nothing of the agent's
		}
		e.FDB = append(e.FDB, peerplan.FDB{MAC: f.HardwareAddr.String(), Dst: dst})
	}
	return e, nil
}

// SyncPeers makes the device hold exactly the entries of desired: one
// route, one permanent neighbour and one FDB entry per peer. It reads what
// the device holds, adds what is missing, replaces what differs and
// deletes what no peer needs, touching only entries on dev and never one
// inside dev.Subnet. Every step is tried; the errors are joined. A second
// call with the same peers changes nothing.
//
// Equivalent, per peer: bridge fdb replace $mac dev $dev dst $vtep self permanent;
// ip neigh replace $addr lladdr $mac dev $dev nud permanent;
// ip route replace $subnet via $addr dev $dev onlink
func SyncPeers(n *netns.NS, dev Device, desired []peerplan.Peer) (peerplan.SyncStats, error) {
	have, err := Entries(n, dev)
	if err != nil {
		return peerplan.SyncStats{}, err
	}
	plan := peerplan.PlanSync(desired, have, dev.Subnet)
	return plan.Stats, apply(n, dev, plan)
}

// ApplyPeers changes the device's entries from those of old, the peers
// the last successful sync made it hold, to those of desired, without
// reading what it holds: one change costs the netlink requests of the
// peers that changed, not a dump of every entry. Something else changing
// the device meanwhile goes unseen until the next SyncPeers, which the
// agent runs on every resync and after any failure.
func ApplyPeers(n *netns.NS, dev Device, old, desired []peerplan.Peer) (peerplan.SyncStats, error) {
	plan := peerplan.PlanSync(desired, peerplan.WantEntries(old), dev.Subnet)
	return plan.Stats, apply(n, dev, plan)
}

func apply(n *netns.NS, dev Device, p peerplan.SyncPlan) error {
	h := n.Netlink()
	var errs []error
	fail := func(what string, err error) {
		errs = append(errs, fmt.Errorf("%s on vxlan %q: %w", what, dev.Name, err))
	}
	for _, r := range p.DelRoutes {
		nr := &netlink.Route{LinkIndex: dev.Index, Dst: cidr.IPNet(r.Dst), Table: unix.RT_TABLE_MAIN, Priority: r.Metric}
		if err := h.RouteDel(nr); err != nil && !isNotFound(err) {
			fail("delete "+r.String(), err)
		}
	}
	for _, nb := range p.DelNeighs {
		nn := &netlink.Neigh{LinkIndex: dev.Index, Family: netlink.FAMILY_V4, IP: nb.IP.AsSlice()}
		if err := h.NeighDel(nn); err != nil && !isNotFound(err) {
			fail("delete "+nb.String(), err)
		}
	}
	for _, f := range p.DelFDB {
		nf, err := fdbNeigh(dev, f)
		if err == nil {
			err = h.NeighDel(nf)
		}
		if err != nil && !isNotFound(err) {
			fail("delete "+f.String(), err)
		}
	}
	for _, f := range p.SetFDB {
		nf, err := fdbNeigh(dev, f)
		if err == nil {
			err = h.NeighSet(nf)
		}
		if err != nil {
			fail("set "+f.String(), err)
		}
	}
	for _, nb := range p.SetNeighs {
		mac, err := net.ParseMAC(nb.MAC)
		if err == nil {
			err = h.NeighSet(&netlink.Neigh{
				LinkIndex: dev.Index, Family: netlink.FAMILY_V4, State: netlink.NUD_PERMANENT,
				Type: unix.RTN_UNICAST, IP: nb.IP.AsSlice(), HardwareAddr: mac,
			})
		}
		if err != nil {
			fail("set "+nb.String(), err)
		}
	}
	for _, r := range p.SetRoutes {
		err := h.RouteReplace(&netlink.Route{
			LinkIndex: dev.Index, Dst: cidr.IPNet(r.Dst), Gw: r.Via.AsSlice(), Flags: int(netlink.FLAG_ONLINK),
			Scope: netlink.SCOPE_UNIVERSE, Table: unix.RT_TABLE_MAIN, Priority: r.Metric,
		})
		if err != nil {
			fail("set "+r.String(), err)
		}
	}
	return errors.Join(errs...)
}

// fdbNeigh is the netlink form of an FDB remote: an AF_BRIDGE neighbour
// of the device itself (NTF_SELF), not of a bridge it is a port of.
func fdbNeigh(dev Device, f peerplan.FDB) (*netlink.Neigh, error) {
	mac, err := net.ParseMAC(f.MAC)
	if err != nil {
		return nil, err
	}
	return &netlink.Neigh{
		LinkIndex: dev.Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, IP: f.Dst.AsSlice(), HardwareAddr: mac,
	}, nil
}
