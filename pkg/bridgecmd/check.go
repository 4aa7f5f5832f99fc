package bridgecmd

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/plan"
)

// Check is the CHECK command: it compares the attachment in prevResult
// with the kernel and names the first difference.
func (p Plugin) Check(ctx context.Context, args *skel.CmdArgs) error {
	c, err := p.begin(args)
	if err != nil {
		return err
	}
	defer c.close()
	prev, err := config.PrevResult(&c.conf.NetConf)
	if err != nil {
		return err
	}
	ctr, err := c.k.OpenContainer(args.Netns)
	if err != nil {
		return err
	}
	defer ctr.Close()
	if c.conf.IPAMConf.Type != "" {
		if err := c.ipam.Check(ctx, c.conf.IPAMConf.Type, c.net.IPAMConf, c.at); err != nil {
			return err
		}
	}
	if err := c.k.CheckHostVeth(c.owner.HostVeth(), c.conf.BrName); err != nil {
		return err
	}
	spec, err := plan.ExpectedContainer(prev, args.IfName)
	if err != nil {
		return err
	}
	spec.Up = !c.conf.DisableContainerInterface
	if err := ctr.Check(spec); err != nil {
		return err
	}
	if c.conf.MacSpoofChk {
		if ok, err := c.k.HasSpoof(c.owner); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("macspoofchk rule for %s missing from table bridge berth-spoof", c.owner.HostVeth())
		}
	}
	if c.conf.IPMasq {
		b, err := c.k.Masq(c.masqBackend())
		if err != nil {
			return err
		}
		return b.Check(nat.Masq{Owner: c.owner, Addrs: c.masqAddrs(spec.Addrs)})
	}
	return nil
}
