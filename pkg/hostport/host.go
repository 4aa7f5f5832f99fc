package hostport

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// EnableLocalnet sets route_localnet on the host interface that routes to
// target, so that 127.0.0.1:hostPort, DNATed to the container, may leave
// through it (the reply is masqueraded by the hairpin set's 127.0.0.0/8
// element). It is never undone: other containers behind the interface may
// rely on it, as with upstream.
//
// Equivalent: sysctl -w net.ipv4.conf.$(ip route get $target | dev).route_localnet=1
func EnableLocalnet(target netip.Addr) error {
	if !target.Is4() {
		return nil
	}
	routes, err := netlink.RouteGet(net.IP(target.AsSlice()))
	if err != nil {
		return fmt.Errorf("portmap: route to container %s: %w", target, err)
	}
	if len(routes) == 0 || routes[0].LinkIndex == 0 {
		return fmt.Errorf("portmap: no interface routes to container %s", target)
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return fmt.Errorf("portmap: interface %d routing to %s: %w", routes[0].LinkIndex, target, err)
	}
	name := l.Attrs().Name
	p := "/proc/sys/net/ipv4/conf/" + name + "/route_localnet"
	if b, err := os.ReadFile(p); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	if err := os.WriteFile(p, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("portmap: enable route_localnet on %s: %w", name, err)
	}
	return nil
}

// FlushUDP deletes conntrack entries of UDP flows to the mappings' host
// ports, so a flow that started before the mapping existed (and so went
// to the host, or to a previous holder) does not keep its old target.
//
// Equivalent: conntrack -D -p udp --orig-port-dst $port
func FlushUDP(ms []Mapping) error {
	var errs []error
	for _, m := range ms {
		if m.Proto != "udp" {
			continue
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
			if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, f.fam, filter); err != nil {
				errs = append(errs, fmt.Errorf("portmap: clear conntrack of udp port %d: %w", m.Port, err))
			}
		}
	}
	return errors.Join(errs...)
}
