package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is a route inside the container. A zero GW means on-link.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// ContainerSpec is the container side of an attachment after IPAM.
type ContainerSpec struct {
	IfName string
	MAC    net.HardwareAddr // expected MAC (CHECK); nil: any
	Addrs  []netip.Prefix
	Routes []Route
	DAD    bool // run IPv6 duplicate address detection (upstream enabledad)
	Up     bool // bring the interface up even with no address
}

// ConfigureContainer gives the container interface its addresses, brings it
// up and adds its routes, inside the container's namespace. arp_notify is set
// first, so bringing the link up after the addresses are on it sends a
// gratuitous ARP: neighbours learn the new MAC at once.
//
// Equivalent: ip netns exec $c sh -c 'sysctl -w net.ipv4.conf.$if.arp_notify=1;
// ip addr add …; ip link set $if up; ip route add …'
func ConfigureContainer(netns ns.NetNS, spec ContainerSpec) error {
	return inNS(netns, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return fmt.Errorf("netlink in container: %w", err)
		}
		defer h.Close()
		l, err := h.LinkByName(spec.IfName)
		if err != nil {
			return fmt.Errorf("look up %s in container: %w", spec.IfName, err)
		}
		if len(spec.Addrs) == 0 && !spec.Up {
			return nil
		}
		_ = writeSysctl(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/arp_notify", spec.IfName), "1")
		has6 := false
		for _, a := range spec.Addrs {
			has6 = has6 || a.Addr().Is6()
		}
		if has6 {
			dad := "0"
			if spec.DAD {
				dad = "1"
			}
			if err := writeSysctl(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/accept_dad", spec.IfName), dad); err != nil {
				if errors.Is(err, os.ErrNotExist) {
					return fmt.Errorf("IPv6 address for %s, but IPv6 is disabled in the container: %w", spec.IfName, err)
				}
				return err
			}
			_ = writeSysctl(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/enhanced_dad", spec.IfName), dad)
		}
		for _, a := range spec.Addrs {
			addr := &netlink.Addr{IPNet: IPNet(a)}
			if a.Addr().Is6() && !spec.DAD {
				addr.Flags = unix.IFA_F_NODAD
			}
			if err := h.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add address %s to %s: %w", a, spec.IfName, err)
			}
		}
		if err := h.LinkSetUp(l); err != nil {
			return fmt.Errorf("set %s up: %w", spec.IfName, err)
		}
		if has6 && spec.DAD {
			if err := settleDAD(h, l, 10*time.Second); err != nil {
				return err
			}
		}
		for _, r := range spec.Routes {
			nr := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: IPNet(r.Dst)}
			if r.GW.IsValid() {
				nr.Gw = r.GW.AsSlice()
			} else {
				nr.Scope = netlink.SCOPE_LINK
			}
			if err := h.RouteAdd(nr); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add route %s via %s dev %s: %w", r.Dst, r.GW, spec.IfName, err)
			}
		}
		return nil
	})
}

// settleDAD waits until no IPv6 address of l is tentative; a duplicate
// address fails the ADD.
func settleDAD(h *netlink.Handle, l netlink.Link, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		addrs, err := h.AddrList(l, netlink.FAMILY_V6)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		tentative := false
		for _, a := range addrs {
			if a.Flags&unix.IFA_F_DADFAILED != 0 {
				return fmt.Errorf("duplicate address detection failed for %s on %s", a.IPNet, l.Attrs().Name)
			}
			if a.Flags&unix.IFA_F_TENTATIVE != 0 {
				tentative = true
			}
		}
		if !tentative {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("addresses of %s still tentative after %s", l.Attrs().Name, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// CheckContainer compares the container interface with spec and returns
// the first difference: the link, its MAC, an address, or a route missing.
// It only reads, over a netlink socket opened in the namespace: no thread
// switches into it.
func CheckContainer(netns ns.NetNS, spec ContainerSpec) error {
	h, err := netlinkHandleIn(netns)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(spec.IfName)
	if err != nil {
		return fmt.Errorf("interface %s not found in container %s: %w", spec.IfName, netns.Path(), err)
	}
	if spec.MAC != nil && l.Attrs().HardwareAddr.String() != spec.MAC.String() {
		return fmt.Errorf("interface %s has MAC %s, want %s", spec.IfName, l.Attrs().HardwareAddr, spec.MAC)
	}
	if (len(spec.Addrs) > 0 || spec.Up) && l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("interface %s is down", spec.IfName)
	}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", spec.IfName, err)
	}
	have := map[netip.Prefix]bool{}
	for _, a := range addrs {
		if p, ok := PrefixOf(a.IPNet); ok {
			have[p] = true
		}
	}
	for _, want := range spec.Addrs {
		if !have[want] {
			return fmt.Errorf("address %s missing from %s", want, spec.IfName)
		}
	}
	routes, err := h.RouteList(l, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes of %s: %w", spec.IfName, err)
	}
	for _, want := range spec.Routes {
		if !hasRoute(routes, want) {
			gw := "on-link"
			if want.GW.IsValid() {
				gw = "via " + want.GW.String()
			}
			return fmt.Errorf("route %s %s missing from %s", want.Dst, gw, spec.IfName)
		}
	}
	return nil
}

func hasRoute(routes []netlink.Route, want Route) bool {
	for _, r := range routes {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if want.Dst.Addr().Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if r.Dst != nil {
			p, ok := PrefixOf(r.Dst)
			if !ok {
				continue
			}
			dst = p
		}
		if dst != want.Dst {
			continue
		}
		gw, _ := netip.AddrFromSlice(r.Gw)
		if !want.GW.IsValid() || gw.Unmap() == want.GW {
			return true
		}
	}
	return false
}

// ContainerLinks lists the link names in the container's namespace.
func ContainerLinks(netns ns.NetNS) ([]netlink.Link, error) {
	h, err := netlinkHandleIn(netns)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return h.LinkList()
}
