package bridgecmd

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/plan"
	"github.com/berth-cni/berth/pkg/spoof"
)

// Check is the CHECK command: it compares the attachment in prevResult
// with the kernel and names the first difference.
func (p Plugin) Check(ctx context.Context, args *skel.CmdArgs) error {
	conf, args, owner, err := p.load(args)
	if err != nil {
		return err
	}
	prev, err := config.PrevResult(&conf.NetConf)
	if err != nil {
		return err
	}
	netns, err := link.OpenContainerNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	if conf.IPAMConf.Type != "" {
		if err := ipam.Check(ctx, conf.IPAMConf.Type, args.StdinData); err != nil {
			return err
		}
	}
	if err := link.CheckHostVeth(link.HostVethName(owner), conf.BrName); err != nil {
		return err
	}
	spec, err := plan.ExpectedContainer(prev, args.IfName)
	if err != nil {
		return err
	}
	spec.Up = !conf.DisableContainerInterface
	if err := link.CheckContainer(netns, spec); err != nil {
		return err
	}
	if conf.MacSpoofChk {
		if ok, err := spoof.Has(spoofOwner(owner)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("macspoofchk rule for %s missing from table bridge berth-spoof", link.HostVethName(owner))
		}
	}
	if conf.IPMasq {
		b, err := nat.New(backendName(conf))
		if err != nil {
			return err
		}
		return b.Check(nat.Masq{Owner: natOwner(owner), Addrs: masqAddrs(conf, spec.Addrs)})
	}
	return nil
}
