package macvlancmd

import (
	"context"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/plan"
)

// Check is the CHECK command: it compares the attachment in prevResult
// with the kernel and names the first difference: the macvlan (on its
// master, in its mode), its MAC, addresses and routes, the master's
// promiscuous mode, the host shim and its routes.
func Check(ctx context.Context, args *skel.CmdArgs) error {
	c, err := begin(args, true)
	if err != nil {
		return err
	}
	defer c.close()
	conf, o, host := c.conf, c.o, c.host
	prev, err := config.PrevResult(&conf.NetConf)
	if err != nil {
		return err
	}
	container, err := link.OpenContainer(args.Netns)
	if err != nil {
		return err
	}
	defer container.Close()
	if conf.IPAMConf.Type != "" {
		if err := ipam.Check(ctx, conf.IPAMConf.Type, args.StdinData, ipam.Of(args)); err != nil {
			return err
		}
	}
	master, user, err := checkedMaster(conf, o, host, container)
	if err != nil {
		return err
	}
	if err := link.CheckMacvlan(container, o, master, conf.Mode); err != nil {
		return err
	}
	spec, err := plan.ExpectedContainer(prev, args.IfName)
	if err != nil {
		return err
	}
	spec.Up = true
	if err := link.CheckContainer(container, spec); err != nil {
		return err
	}
	if conf.Promisc && !master.Promisc {
		return fmt.Errorf("master %q is not in promiscuous mode (promisc: true)", master.Name)
	}
	if conf.HostShim {
		mac, err := net.ParseMAC(user.MAC)
		if err != nil || !user.Shim {
			return fmt.Errorf("no host shim route for %s/%s recorded on master %q", o.ContainerID, o.IfName, master.Name)
		}
		peer := link.ShimPeer{MAC: mac}
		for _, p := range spec.Addrs {
			peer.Addrs = append(peer.Addrs, p.Addr())
		}
		return link.CheckShim(host, master, peer)
	}
	return nil
}

// checkedMaster is the master the ADD used: the one the attachment is
// recorded on, or for a master inside the container (linkInContainer),
// the one the config names now.
func checkedMaster(conf *config.Macvlan, o owner.Owner, host, container *netns.NS) (link.Master, masterUser, error) {
	if conf.LinkInContainer {
		m, _, err := findMaster(conf, host, container)
		return m, masterUser{}, err
	}
	name, u, ok, err := openMasters(conf.DataDir, host).lookup(o)
	if err != nil {
		return link.Master{}, u, err
	}
	if !ok {
		return link.Master{}, u, fmt.Errorf("%s/%s is recorded on no macvlan master under %s", o.ContainerID, o.IfName, conf.DataDir)
	}
	m, err := link.FindMaster(host, name)
	if err != nil {
		return m, u, fmt.Errorf("the attachment's master: %w", err)
	}
	return m, u, nil
}
