package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/plan"
)

// ConfigureContainer gives the container interface its addresses, brings it
// up and adds its routes, inside the container's namespace. arp_notify is set
// first, so bringing the link up after the addresses are on it sends a
// gratuitous ARP: neighbours learn the new MAC at once.
//
// The sysctls are written from the caller's own thread switched into the
// namespace (netns.Do); the rest goes over the namespace's netlink socket.
//
// Equivalent: ip netns exec $c sh -c 'sysctl -w net.ipv4.conf.$if.arp_notify=1;
// ip addr add …; ip link set $if up; ip route add …'
func ConfigureContainer(c *netns.NS, spec plan.Container) error {
	h := c.Netlink()
	l, err := h.LinkByName(spec.IfName)
	if err != nil {
		return fmt.Errorf("look up %s in container: %w", spec.IfName, err)
	}
	if len(spec.Addrs) == 0 && !spec.Up {
		return nil
	}
	has6 := false
	for _, a := range spec.Addrs {
		has6 = has6 || a.Addr().Is6()
	}
	// One switch into the namespace for every sysctl.
	if err := c.Do(func() error {
		_ = writeSysctl(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/arp_notify", spec.IfName), "1")
		if !has6 {
			return nil
		}
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
		return nil
	}); err != nil {
		return err
	}
	for _, a := range spec.Addrs {
		addr := &netlink.Addr{IPNet: cidr.IPNet(a)}
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
		nr := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: cidr.IPNet(r.Dst)}
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
// It only reads, over the namespace's netlink socket.
func CheckContainer(c *netns.NS, spec plan.Container) error {
	h := c.Netlink()
	l, err := h.LinkByName(spec.IfName)
	if err != nil {
		return fmt.Errorf("interface %s not found in container %s: %w", spec.IfName, c.Path(), err)
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
		if p, ok := cidr.Prefix(a.IPNet); ok {
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

func hasRoute(routes []netlink.Route, want plan.Route) bool {
	for _, r := range routes {
		dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if want.Dst.Addr().Is6() {
			dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if r.Dst != nil {
			p, ok := cidr.Prefix(r.Dst)
			if !ok {
				continue
			}
			dst = p
		}
		if dst != want.Dst {
			continue
		}
		gw, _ := cidr.Addr(r.Gw)
		if !want.GW.IsValid() || gw == want.GW {
			return true
		}
	}
	return false
}
