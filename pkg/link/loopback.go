package link

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/netns"
)

// LoopbackUp brings lo up inside the namespace.
//
// Equivalent: ip netns exec $c ip link set lo up
func LoopbackUp(n *netns.NS) error {
	h := n.Netlink()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("look up lo in %s: %w", n.Path(), err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up in %s: %w", n.Path(), err)
	}
	return nil
}

// CheckIsolated verifies the namespace has lo up, no other link and no
// route in its main table: nothing in, nothing out.
func CheckIsolated(n *netns.NS) error {
	h := n.Netlink()
	links, err := netns.RetryDump(h.LinkList)
	if err != nil {
		return fmt.Errorf("list links in %s: %w", n.Path(), err)
	}
	for _, l := range links {
		a := l.Attrs()
		if a.Name == "lo" {
			if a.Flags&net.FlagUp == 0 {
				return fmt.Errorf("lo is down in %s", n.Path())
			}
			continue
		}
		return fmt.Errorf("namespace %s has interface %s (%s); a null container has only lo", n.Path(), a.Name, l.Type())
	}
	routes, err := netns.RetryDump(func() ([]netlink.Route, error) {
		return h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: 254}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return fmt.Errorf("list routes in %s: %w", n.Path(), err)
	}
	for _, r := range routes {
		if r.LinkIndex != 0 {
			if l, err := h.LinkByIndex(r.LinkIndex); err == nil && l.Attrs().Name == "lo" && r.Dst != nil && r.Dst.IP.IsLoopback() {
				continue // the kernel's own ::1 route
			}
		}
		return fmt.Errorf("namespace %s has route %s; a null container has no route out", n.Path(), r)
	}
	return nil
}
