package lab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
)

// LinkUp sets the link name up in this namespace.
//
// Equivalent: ip -n $ns link set $name up
func (n *NS) LinkUp(name string) error {
	return n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up in %s: %w", name, n.Name, err)
		}
		return nil
	})
}

// LinkDown sets the link name down in this namespace.
//
// Equivalent: ip -n $ns link set $name down
func (n *NS) LinkDown(name string) error {
	return n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		if err := h.LinkSetDown(l); err != nil {
			return fmt.Errorf("set %s down in %s: %w", name, n.Name, err)
		}
		return nil
	})
}

// AddAddr adds addr (an address with its prefix length) to link name, with
// IPv6 duplicate address detection off so the address is usable at once.
//
// Equivalent: ip -n $ns addr add $addr dev $name nodad
func (n *NS) AddAddr(name string, addr netip.Prefix) error {
	return n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		a := &netlink.Addr{IPNet: cidr.IPNet(addr)}
		if addr.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(l, a); err != nil {
			return fmt.Errorf("add %s to %s in %s: %w", addr, name, n.Name, err)
		}
		return nil
	})
}

// DelAddr removes addr from link name.
//
// Equivalent: ip -n $ns addr del $addr dev $name
func (n *NS) DelAddr(name string, addr netip.Prefix) error {
	return n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		if err := h.AddrDel(l, &netlink.Addr{IPNet: cidr.IPNet(addr)}); err != nil {
			return fmt.Errorf("del %s from %s in %s: %w", addr, name, n.Name, err)
		}
		return nil
	})
}

// AddDefaultRoute adds a default route via gw (its family picks v4 or v6).
//
// Equivalent: ip -n $ns route add default via $gw
func (n *NS) AddDefaultRoute(gw netip.Addr) error {
	return n.withHandle(func(h *netlink.Handle) error {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if gw.Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		r := &netlink.Route{Dst: cidr.IPNet(dst), Gw: gw.AsSlice()}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %s in %s: %w", gw, n.Name, err)
		}
		return nil
	})
}

// VethEnd is one end of a veth pair: its namespace, name and addresses.
type VethEnd struct {
	NS    *NS
	Name  string
	Addrs []netip.Prefix
}

// Veth creates a veth pair with end a in a.NS and end b in b.NS, adds the
// addresses (IPv6 without duplicate address detection) and sets both ends up.
//
// Equivalent: ip -n $a link add $aname type veth peer name $bname netns $b; ip addr add …; ip link set … up
func Veth(a, b VethEnd) error {
	bh, err := netns.GetFromPath(b.NS.Path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", b.NS.Path, err)
	}
	defer bh.Close()
	err = a.NS.withHandle(func(h *netlink.Handle) error {
		v := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: a.Name},
			PeerName:      b.Name,
			PeerNamespace: netlink.NsFd(int(bh)),
		}
		if lerr := h.LinkAdd(v); lerr != nil {
			return fmt.Errorf("add veth %s (%s) – %s (%s): %w", a.Name, a.NS.Name, b.Name, b.NS.Name, lerr)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, end := range []VethEnd{a, b} {
		// No duplicate address detection on the link-local address either:
		// neighbour discovery can start as soon as the link is up.
		if err := end.NS.WriteSysctl("net/ipv6/conf/"+end.Name+"/accept_dad", "0"); err != nil {
			return err
		}
		if err := end.NS.LinkUp(end.Name); err != nil {
			return err
		}
	}
	for _, end := range []VethEnd{a, b} {
		for _, p := range end.Addrs {
			if err := end.NS.AddAddr(end.Name, p); err != nil {
				return err
			}
		}
	}
	return nil
}

// AddVlan adds the 802.1q sub-interface name of parent with VLAN id, adds
// the addresses (IPv6 without duplicate address detection) and sets it up.
// It needs a kernel with 802.1q (RequireKernel(t, Kernel8021Q)).
//
// Equivalent: ip -n $ns link add link $parent name $name type vlan id $id; ip addr add …; ip link set $name up
func (n *NS) AddVlan(parent, name string, id int, addrs ...netip.Prefix) error {
	err := n.withHandle(func(h *netlink.Handle) error {
		p, err := h.LinkByName(parent)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", parent, n.Name, err)
		}
		v := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: name, ParentIndex: p.Attrs().Index}, VlanId: id}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("add vlan %s (id %d on %s) in %s: %w", name, id, parent, n.Name, err)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if err := n.WriteSysctl("net/ipv6/conf/"+name+"/accept_dad", "0"); err != nil {
		return err
	}
	if err := n.LinkUp(name); err != nil {
		return err
	}
	for _, a := range addrs {
		if err := n.AddAddr(name, a); err != nil {
			return err
		}
	}
	return nil
}

// Link is a summary of a network interface.
type Link struct {
	Name  string
	Index int
	Type  string // "veth", "bridge", "device" (lo), …
	Alias string
	Up    bool   // administratively up
	Peer  int    // for a veth in another namespace: the peer's ifindex there
	MAC   string // hardware address
	// Master is the index of the bridge this link is a port of, or 0.
	Master int
	Addrs  []netip.Prefix
}

// Links lists the links of this namespace with their addresses.
//
// Equivalent: ip -n $ns -d addr show
func (n *NS) Links() ([]Link, error) {
	var out []Link
	err := n.withHandle(func(h *netlink.Handle) error {
		ls, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links in %s: %w", n.Name, err)
		}
		for _, l := range ls {
			a := l.Attrs()
			lk := Link{
				Name:   a.Name,
				Index:  a.Index,
				Type:   l.Type(),
				Alias:  a.Alias,
				Up:     a.Flags&net.FlagUp != 0,
				MAC:    a.HardwareAddr.String(),
				Master: a.MasterIndex,
				Peer:   a.ParentIndex,
			}
			addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
			if err != nil {
				return fmt.Errorf("list addresses of %s in %s: %w", a.Name, n.Name, err)
			}
			for _, ad := range addrs {
				if p, ok := cidr.Prefix(ad.IPNet); ok {
					lk.Addrs = append(lk.Addrs, p)
				}
			}
			out = append(out, lk)
		}
		return nil
	})
	return out, err
}

// LinkByName returns the link called name, or an error wrapping
// ErrNotFound.
func (n *NS) LinkByName(name string) (Link, error) {
	ls, err := n.Links()
	if err != nil {
		return Link{}, err
	}
	for _, l := range ls {
		if l.Name == name {
			return l, nil
		}
	}
	return Link{}, fmt.Errorf("link %s in %s: %w", name, n.Name, ErrNotFound)
}

// ErrNotFound is wrapped by lookups that find nothing.
var ErrNotFound = errors.New("not found")

// Route is a summary of a route of the main table.
type Route struct {
	Dst    netip.Prefix // 0.0.0.0/0 or ::/0 for a default route
	Gw     netip.Addr   // invalid when on-link
	Dev    string
	Proto  int
	Family int // unix.AF_INET or unix.AF_INET6
}

// Routes lists the main-table routes of this namespace (both families),
// skipping IPv6 multicast and link-local routes the kernel adds to every
// interface that is up.
//
// Equivalent: ip -n $ns route; ip -n $ns -6 route
func (n *NS) Routes() ([]Route, error) {
	var out []Route
	err := n.withHandle(func(h *netlink.Handle) error {
		names := map[int]string{}
		ls, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("list links in %s: %w", n.Name, err)
		}
		for _, l := range ls {
			names[l.Attrs().Index] = l.Attrs().Name
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			rs, err := h.RouteList(nil, fam)
			if err != nil {
				return fmt.Errorf("list routes in %s: %w", n.Name, err)
			}
			for _, r := range rs {
				rt := Route{Dev: names[r.LinkIndex], Proto: int(r.Protocol), Family: fam}
				if p, ok := cidr.Prefix(r.Dst); ok {
					rt.Dst = p
				} else if fam == netlink.FAMILY_V4 {
					rt.Dst = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
				} else {
					rt.Dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
				}
				if fam == netlink.FAMILY_V6 && (rt.Dst.Addr().IsLinkLocalUnicast() || rt.Dst.Addr().IsMulticast()) {
					continue
				}
				if gw, ok := netip.AddrFromSlice(r.Gw); ok {
					rt.Gw = gw.Unmap()
				}
				out = append(out, rt)
			}
		}
		return nil
	})
	return out, err
}
