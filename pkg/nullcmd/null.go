// Package nullcmd is the null plugin's commands (Docker's "none"
// network): the container gets loopback up and nothing else. It touches
// only the container's namespace, over netlink.
package nullcmd

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

// Add is the ADD command: lo up, the loopback addresses as the result.
func Add(_ context.Context, args *skel.CmdArgs, out io.Writer) error {
	conf, err := config.ParseNull(args.StdinData)
	if err != nil {
		return err
	}
	netns, err := link.OpenContainer(args.Netns)
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

// Del is the DEL command. It has nothing to undo: lo dies with the
// namespace.
func Del(_ context.Context, args *skel.CmdArgs) error {
	_, err := config.ParseNull(args.StdinData)
	return err
}

// Check is the CHECK command: lo up, no other link, no route.
func Check(_ context.Context, args *skel.CmdArgs) error {
	if _, err := config.ParseNull(args.StdinData); err != nil {
		return err
	}
	netns, err := link.OpenContainer(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()
	return link.CheckIsolated(netns)
}

// Noop is GC and STATUS: nothing is held, nothing can be missing; the
// config is still checked.
func Noop(_ context.Context, args *skel.CmdArgs) error {
	_, err := config.ParseNull(args.StdinData)
	return err
}
