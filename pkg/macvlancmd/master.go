package macvlancmd

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/netns"
)

// findMaster finds the attachment's master and checks that it can carry a
// macvlan: it exists in the namespace the config says (the host's, or the
// container's with linkInContainer), it is up, and its MTU is at least the
// config's. An empty "master" is the interface of that namespace's default
// route (IPv4 first, then IPv6, as upstream), looked up now. It returns the
// namespace the master is in: host, or container. container may be nil
// (STATUS), which skips the wrong-namespace diagnosis of a missing master.
func findMaster(conf *config.Macvlan, host, container *netns.NS) (link.Master, *netns.NS, error) {
	in := host
	if conf.LinkInContainer {
		in = container
	}
	name := conf.Master
	if name == "" {
		l, err := link.DefaultRouteLink(in, netlink.FAMILY_V4, netlink.FAMILY_V6)
		if errors.Is(err, link.ErrNoDefaultRoute) {
			return link.Master{}, in, hostState("no master given, and %s has no default route to take it from: set \"master\"", side(conf))
		}
		if err != nil {
			return link.Master{}, in, err
		}
		name = l.Attrs().Name
	}
	m, err := link.FindMaster(in, name)
	if errors.Is(err, link.ErrNoSuchLink) {
		return m, in, masterMissing(conf, name, host, container)
	}
	if err != nil {
		return m, in, err
	}
	if !m.Up {
		return m, in, hostState("master %q is down (ip link set %s up)", name, name)
	}
	if conf.MTU > m.MTU {
		return m, in, cnierr.Field("mtu", conf.MTU, "above the MTU %d of master %q", m.MTU, name)
	}
	return m, in, nil
}

// side names the namespace the master is looked for in.
func side(conf *config.Macvlan) string {
	if conf.LinkInContainer {
		return "the container's namespace (linkInContainer)"
	}
	return "the host's namespace"
}

// masterMissing explains a master that is not where the config says: in
// the other namespace, a VLAN sub-interface this kernel cannot have, or
// simply absent.
func masterMissing(conf *config.Macvlan, name string, host, container *netns.NS) error {
	if container != nil {
		other := host
		if !conf.LinkInContainer {
			other = container
		}
		if _, err := link.FindMaster(other, name); err == nil {
			if conf.LinkInContainer {
				return hostState("master %q is in the host's namespace, not in the container's: linkInContainer is true (remove it to use the host's %s)", name, name)
			}
			return hostState("master %q is not in the host's namespace but in the container's (%s): set linkInContainer to use it there", name, container.Path())
		}
	}
	if parent, vid, ok := link.VlanParent(name); ok {
		supported, err := link.VlanSupported(host)
		if err != nil {
			return err
		}
		what := fmt.Errorf("master %q (VLAN %d on %q, as Docker names VLAN sub-interfaces) does not exist: %w", name, vid, parent, link.ErrNoSuchLink)
		if !supported {
			return cnierr.KernelFeature("802.1q VLAN support (module 8021q)", what)
		}
		return hostState("%v; berth does not create VLAN sub-interfaces (ip link add link %s name %s type vlan id %d)", what, parent, name, vid)
	}
	return hostState("master %q: no such interface in %s", name, side(conf))
}
