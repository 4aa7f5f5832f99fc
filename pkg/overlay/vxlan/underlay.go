package vxlan

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/netns"
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

// ErrNoDefaultRoute is wrapped by FindUnderlay when no interface is named
// and the namespace has no IPv4 default route. It is also
// link.ErrNoDefaultRoute (errors.Is).
var ErrNoDefaultRoute error = noIPv4DefaultRoute{}

type noIPv4DefaultRoute struct{}

func (noIPv4DefaultRoute) Error() string { return "no IPv4 default route" }
func (noIPv4DefaultRoute) Unwrap() error { return link.ErrNoDefaultRoute }

// FindUnderlay looks up the interface name in n, or when name is "" the
// interface of n's IPv4 default route (link.DefaultRouteLink: the one with
// the lowest metric).
//
// Equivalent: ip -4 route show default; ip -4 addr show dev $name scope global
func FindUnderlay(n *netns.NS, name string) (Underlay, error) {
	h := n.Netlink()
	var l netlink.Link
	var err error
	if name == "" {
		l, err = link.DefaultRouteLink(n, netlink.FAMILY_V4)
		if errors.Is(err, link.ErrNoDefaultRoute) {
			err = fmt.Errorf("find the underlay interface in %s: %w (name one)", n, ErrNoDefaultRoute)
		}
	} else if l, err = h.LinkByName(name); err != nil {
		err = fmt.Errorf("underlay interface %q in %s: %w", name, n, err)
	}
	if err != nil {
		return Underlay{}, err
	}
	a := l.Attrs()
	u := Underlay{Name: a.Name, Index: a.Index, MTU: a.MTU}
	addrs, err := netns.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V4) })
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
