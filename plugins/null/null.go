package main

import (
	"context"
	"fmt"
	"io"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/link"
)

func add(_ context.Context, args *skel.CmdArgs, out io.Writer) error {
	conf, err := config.ParseNull(args.StdinData)
	if err != nil {
		return err
	}
	netns, err := link.OpenContainerNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	if err := link.LoopbackUp(netns); err != nil {
		return err
	}
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: "lo", Mac: "00:00:00:00:00:00", Sandbox: args.Netns}},
		IPs: []*current.IPConfig{
			{Interface: current.Int(0), Address: net.IPNet{IP: net.IPv4(127, 0, 0, 1).To4(), Mask: net.CIDRMask(8, 32)}},
			{Interface: current.Int(0), Address: net.IPNet{IP: net.IPv6loopback, Mask: net.CIDRMask(128, 128)}},
		},
	}
	vres, err := res.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return fmt.Errorf("convert result to %s: %w", conf.CNIVersion, err)
	}
	return vres.PrintTo(out)
}

// del has nothing to undo: lo dies with the namespace.
func del(_ context.Context, args *skel.CmdArgs) error {
	_, err := config.ParseNull(args.StdinData)
	return err
}

func check(_ context.Context, args *skel.CmdArgs) error {
	if _, err := config.ParseNull(args.StdinData); err != nil {
		return err
	}
	netns, err := link.OpenContainerNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	return link.CheckIsolated(netns)
}

func noop(_ context.Context, args *skel.CmdArgs) error {
	_, err := config.ParseNull(args.StdinData)
	return err
}
