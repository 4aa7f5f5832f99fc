package main

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/plan"
	"github.com/berth-cni/berth/pkg/spoof"
)

// check compares the attachment in prevResult with the kernel and names
// the first difference.
func check(ctx context.Context, args *skel.CmdArgs) error {
	conf, owner, err := load(args)
	if err != nil {
		return err
	}
	prev, err := prevResult(conf)
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
	spec := link.ContainerSpec{IfName: args.IfName, Up: !conf.DisableContainerInterface}
	for _, iface := range prev.Interfaces {
		if iface.Sandbox != "" && iface.Name == args.IfName && iface.Mac != "" {
			mac, err := config.ParseMAC("prevResult.interfaces.mac", iface.Mac)
			if err != nil {
				return err
			}
			spec.MAC = mac
		}
	}
	spec.Addrs = plan.ResultPrefixes(prev)
	for _, r := range prev.Routes {
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		route := link.Route{Dst: netip.PrefixFrom(dst.Unmap(), ones)}
		if gw, ok := netip.AddrFromSlice(r.GW); ok {
			route.GW = gw.Unmap()
		}
		spec.Routes = append(spec.Routes, route)
	}
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
		return b.Check(nat.Masq{Owner: natOwner(owner), Addrs: spec.Addrs})
	}
	return nil
}

func prevResult(conf *config.Bridge) (*current.Result, error) {
	if conf.RawPrevResult == nil {
		return nil, fmt.Errorf("CHECK needs prevResult in the config")
	}
	if err := parsePrev(&conf.NetConf); err != nil {
		return nil, err
	}
	return current.NewResultFromResult(conf.PrevResult)
}

func parsePrev(conf *types.NetConf) error {
	if err := version.ParsePrevResult(conf); err != nil {
		return cnierr.Field("prevResult", "", "%v", err)
	}
	return nil
}
