// Package macvlancmd is the macvlan plugin's ADD, DEL, CHECK, GC and
// STATUS: each container gets a macvlan sub-interface of a host NIC (the
// master), with its own MAC on the physical network, addresses from the
// IPAM plugin, and optionally a host shim through which the host reaches
// it. It touches, in the host's namespace, the master's promiscuous mode
// and the host shim with its routes and neighbours; in the container's
// namespace, its macvlan; files: attachment records and per-master state
// under the data dir, flocks under /run/berth/lock.
package macvlancmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/plan"
	"github.com/berth-cni/berth/pkg/state"
	"github.com/berth-cni/berth/pkg/undo"
)

// cmd is what every command starts from: the config, the attachment it
// names (zero for GC and STATUS) and the host's namespace.
type cmd struct {
	conf *config.Macvlan
	o    owner.Owner
	host *netns.NS
}

// begin parses the config (and, with attachment, the runtime arguments
// naming the attachment) and opens the host's namespace; the caller
// closes it.
func begin(args *skel.CmdArgs, attachment bool) (*cmd, error) {
	conf, err := config.ParseMacvlan(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	c := &cmd{conf: conf}
	if attachment {
		if c.o, err = config.Attachment(conf.Name, args.ContainerID, args.IfName); err != nil {
			return nil, err
		}
	}
	if c.host, err = netns.Host(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *cmd) close() { c.host.Close() }

// Add is the ADD command.
func Add(ctx context.Context, args *skel.CmdArgs, out io.Writer) (err error) {
	c, err := begin(args, true)
	if err != nil {
		return err
	}
	defer c.close()
	conf, o, host := c.conf, c.o, c.host
	container, err := link.OpenContainerForAdd(args.Netns, args.IfName)
	if err != nil {
		return err
	}
	defer container.Close()
	master, masterNS, err := findMaster(conf, host, container)
	if err != nil {
		return err
	}

	var steps undo.Stack
	defer steps.OnError(&err)

	store := state.Open(conf.DataDir, conf.Name)
	rec := state.Record{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName, Netns: args.Netns}
	if err := store.Put(rec); err != nil {
		return err
	}
	steps.Push("attachment record", func() error { return store.Delete(args.ContainerID, args.IfName) })
	ms := openMasters(conf.DataDir, host)
	if masterNS == host {
		u := masterUser{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName, Mode: conf.Mode, Promisc: conf.Promisc}
		if err := ms.claim(master, u); err != nil {
			return err
		}
		steps.Push("master "+master.Name, func() error { return ms.release(o) })
	}
	mac, err := link.AddMacvlan(link.MacvlanSpec{
		Owner: o, Master: master, MasterNS: masterNS, Container: container,
		Mode: conf.Mode, MTU: conf.MTU, MAC: conf.MAC, BcQueueLen: conf.BcQueueLen,
	})
	if err != nil {
		return err
	}
	steps.Push("macvlan", func() error { return link.DeleteMacvlan(container, o) })

	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: args.IfName, Mac: mac.String(), Sandbox: args.Netns}},
		DNS:        conf.DNS,
	}
	if conf.IPAMConf.Type == "" {
		// Layer 2 only, as upstream: the interface comes up bare.
		if err := link.ConfigureContainer(container, plan.Container{IfName: args.IfName, Up: true}); err != nil {
			return err
		}
		return finish(res, conf.CNIVersion, store, rec, out)
	}
	ipres, err := ipam.Add(ctx, conf.IPAMConf.Type, args.StdinData, ipam.Of(args))
	if err != nil {
		return err
	}
	steps.Push("ipam", func() error { return ipam.Del(ctx, conf.IPAMConf.Type, args.StdinData, ipam.Of(args)) })
	res.IPs, res.Routes = ipres.IPs, ipres.Routes
	l3, err := plan.PlanL3(res, plan.Gateway{}, 0)
	if err != nil {
		return err
	}
	if err := link.NotifyNeighbours(container, args.IfName); err != nil {
		return err
	}
	if err := link.ConfigureContainer(container, plan.Container{IfName: args.IfName, Addrs: l3.Addrs, Routes: l3.Routes}); err != nil {
		return err
	}
	if conf.HostShim {
		if err := ms.routeShim(master, o, mac, addrsOf(l3)); err != nil {
			return err
		}
	}
	for _, p := range l3.Addrs {
		rec.IPs = append(rec.IPs, p.String())
	}
	return finish(res, conf.CNIVersion, store, rec, out)
}

// finish records the completed attachment and prints the result in the
// config's version.
func finish(res *current.Result, version string, store state.Store, rec state.Record, out io.Writer) error {
	rec.Complete = true
	if err := store.Put(rec); err != nil {
		return err
	}
	vres, err := res.GetAsVersion(version)
	if err != nil {
		return fmt.Errorf("convert result to %s: %w", version, err)
	}
	return vres.PrintTo(out)
}

func addrsOf(l3 plan.L3) []netip.Addr {
	out := make([]netip.Addr, 0, len(l3.Addrs))
	for _, p := range l3.Addrs {
		out = append(out, p.Addr())
	}
	return out
}

// Del is the DEL command: it removes the container's macvlan (if its
// namespace is still there: the kernel deletes a macvlan with its
// namespace), its addresses (IPAM), its place on the master (shim routes,
// promiscuous mode) and its record. Every step runs even if another
// fails; what is missing is success.
func Del(ctx context.Context, args *skel.CmdArgs) error {
	c, err := begin(args, true)
	if err != nil {
		return err
	}
	defer c.close()
	conf, o, host := c.conf, c.o, c.host
	errs := []error{deleteIn(args.Netns, o)}
	if conf.IPAMConf.Type != "" {
		errs = append(errs, ipam.Del(ctx, conf.IPAMConf.Type, args.StdinData, ipam.Of(args)))
	}
	errs = append(errs, openMasters(conf.DataDir, host).release(o))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return state.Open(conf.DataDir, conf.Name).Delete(args.ContainerID, args.IfName)
}

// deleteIn deletes the owner's macvlan in the namespace at path. A
// namespace that is gone (or no path at all, as runtimes send after the
// container died) holds nothing to delete.
func deleteIn(path string, o owner.Owner) error {
	if path == "" {
		return nil
	}
	n, err := link.OpenContainer(path)
	if err != nil {
		if !errors.Is(err, netns.ErrGone) {
			// Not a namespace (an unmounted leftover file), or the
			// host's own: nothing of the container's can be in it.
			fmt.Fprintf(os.Stderr, "macvlan DEL: %v: no link deleted there\n", err)
		}
		return nil
	}
	defer n.Close()
	return link.DeleteMacvlan(n, o)
}

// Status is the STATUS command: whether an ADD could work now: the master
// is there and up (looked up as ADD would, default route included) and
// the IPAM plugin answers. A master inside containers (linkInContainer)
// cannot be seen from here.
func Status(ctx context.Context, args *skel.CmdArgs) error {
	c, err := begin(args, false)
	if err != nil {
		return err
	}
	defer c.close()
	conf := c.conf
	if !conf.LinkInContainer {
		if _, _, err := findMaster(conf, c.host, nil); err != nil {
			return notAvailable(err)
		}
	}
	if conf.IPAMConf.Type != "" {
		if err := ipam.Status(ctx, conf.IPAMConf.Type, args.StdinData, args.Path); err != nil {
			return notAvailable(err)
		}
	}
	return nil
}

// notAvailable marks a STATUS failure with the spec's code 50.
func notAvailable(err error) error {
	return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("macvlan cannot serve ADD: %w", err))
}
