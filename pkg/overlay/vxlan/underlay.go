package vxlan

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
)

// Underlay is the interface the VXLAN packets leave by.
type Underlay struct {
	Name  string
	Index int
	MTU   int
	// Addr is the interface's first global IPv4 address, the default
	// VTEP; invalid when it has none.
	Addr netip.Addr
}

// ErrNoDefaultRoute is wrapped by Underlay when no interface is named and
// the namespace has no IPv4 default route.
var ErrNoDefaultRoute = errors.New("no IPv4 default route")

// Underlay looks up the interface name, or when name is "" the interface
// of the IPv4 default route (the one with the lowest metric).
//
// Equivalent: ip -4 route show default; ip -4 addr show dev $name scope global
func (n *NS) Underlay(name string) (Underlay, error) {
	var l netlink.Link
	var err error
	if name == "" {
		l, err = n.defaultRouteLink()
	} else if l, err = n.h.LinkByName(name); err != nil {
		err = fmt.Errorf("underlay interface %q in %s: %w", name, n, err)
	}
	if err != nil {
		return Underlay{}, err
	}
	a := l.Attrs()
	u := Underlay{Name: a.Name, Index: a.Index, MTU: a.MTU}
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return n.h.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return Underlay{}, fmt.Errorf("list addresses of underlay %q: %w", a.Name, err)
	}
	for _, ad := range addrs {
		if p, ok := cidr.Prefix(ad.IPNet); ok && ad.Scope == unix.RT_SCOPE_UNIVERSE && !p.Addr().IsLinkLocalUnicast() {
			u.Addr = p.Addr()
			break
		}
	}
	return u, nil
}

func (n *NS) defaultRouteLink() (netlink.Link, error) {
	routes, err := retryDump(func() ([]netlink.Route, error) {
		return n.h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	})
	if err != nil {
		return nil, fmt.Errorf("list routes in %s: %w", n, err)
	}
	best, index := -1, 0
	for _, r := range routes {
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				continue
			}
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
		return nil, fmt.Errorf("find the underlay interface in %s: %w (name one)", n, ErrNoDefaultRoute)
	}
	l, err := n.h.LinkByIndex(index)
	if err != nil {
		return nil, fmt.Errorf("link %d of the default route in %s: %w", index, n, err)
	}
	return l, nil
}
