package hostport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/netns"
)

// EnableLocalnet sets route_localnet in n on the interface that routes to
// target, so that 127.0.0.1:hostPort, DNATed to the container, may leave
// through it (the reply is masqueraded by the hairpin set's 127.0.0.0/8
// element). It is never undone: other containers behind the interface may
// rely on it, as with upstream.
//
// Equivalent: sysctl -w net.ipv4.conf.$(ip route get $target | dev).route_localnet=1
func EnableLocalnet(n *netns.NS, target netip.Addr) error {
	if !target.Is4() {
		return nil
	}
	h := n.Netlink()
	routes, err := h.RouteGet(net.IP(target.AsSlice()))
	if err != nil {
		return fmt.Errorf("portmap: route to container %s: %w", target, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return fmt.Errorf("portmap: no interface routes to container %s", target)
	}
	l, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return fmt.Errorf("portmap: interface %d routing to %s: %w", routes[0].LinkIndex, target, err)
	}
	name := l.Attrs().Name
	if err := n.EnsureSysctl("ipv4/conf/"+name+"/route_localnet", "1"); err != nil {
		return fmt.Errorf("portmap: enable route_localnet on %s: %w", name, err)
	}
	return nil
}

// FlushUDP deletes n's conntrack entries of UDP flows to the mappings'
// host ports, so a flow that started before the mapping existed (and so
// went to the host, or to a previous holder) does not keep its old target.
//
// Equivalent: conntrack -D -p udp --orig-port-dst $port
func FlushUDP(n *netns.NS, ms []Mapping) error {
	var h *netlink.Handle
	var errs []error
	for _, m := range ms {
		if m.Proto != "udp" {
			continue
		}
		if h == nil {
			var err error
			if h, err = n.NetlinkFamily(unix.NETLINK_NETFILTER); err != nil {
				return fmt.Errorf("portmap: clear conntrack of udp ports: %w", err)
			}
			defer h.Close()
		}
		v4, v6 := m.Families()
		for _, f := range []struct {
			on  bool
			fam netlink.InetFamily
		}{{v4, unix.AF_INET}, {v6, unix.AF_INET6}} {
			if !f.on {
				continue
			}
			filter := &netlink.ConntrackFilter{}
			if err := errors.Join(filter.AddProtocol(unix.IPPROTO_UDP), filter.AddPort(netlink.ConntrackOrigDstPort, m.Port)); err != nil {
				errs = append(errs, err)
				continue
			}
			if m.Addr.IsValid() && !m.Addr.IsUnspecified() {
				if err := filter.AddIP(netlink.ConntrackOrigDstIP, net.IP(m.Addr.AsSlice())); err != nil {
					errs = append(errs, err)
					continue
				}
			}
			if _, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, f.fam, filter); err != nil {
				errs = append(errs, fmt.Errorf("portmap: clear conntrack of udp port %d: %w", m.Port, err))
			}
		}
	}
	return errors.Join(errs...)
}
