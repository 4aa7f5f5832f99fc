package link

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/netns"
)

// ErrNoDefaultRoute is wrapped by DefaultRouteLink when the namespace has
// no default route of the families asked for.
var ErrNoDefaultRoute = errors.New("no default route")

// DefaultRouteLink returns the link of n's default route: among the
// default routes of the main table of the first family in families that
// has one (netlink.FAMILY_V4, netlink.FAMILY_V6), the one with the lowest
// metric; a multipath route counts by its first hop. It is the one rule
// for "the host's interface" (the overlay's underlay, macvlan's default
// master).
//
// Equivalent: ip -4 route show default table main | sort by metric | head -1
func DefaultRouteLink(n *netns.NS, families ...int) (netlink.Link, error) {
	h := n.Netlink()
	for _, fam := range families {
		routes, err := netns.RetryDump(func() ([]netlink.Route, error) {
			return h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		})
		if err != nil {
			return nil, fmt.Errorf("list routes in %s: %w", n, err)
		}
		best, index := -1, 0
		for _, r := range routes {
			if !cidr.IsDefault(r.Dst) {
				continue
			}
			i := r.LinkIndex
			if i == 0 && len(r.MultiPath) > 0 {
				i = r.MultiPath[0].LinkIndex
			}
			if i != 0 && (best < 0 || r.Priority < best) {
				best, index = r.Priority, i
			}
		}
		if index == 0 {
			continue
		}
		l, err := h.LinkByIndex(index)
		if err != nil {
			return nil, fmt.Errorf("link %d of the default route in %s: %w", index, n, err)
		}
		return l, nil
	}
	return nil, fmt.Errorf("%s: %w", n, ErrNoDefaultRoute)
}
