package bridgecmd

import (
	"context"
	"io"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/plan"
	"github.com/berth-cni/berth/pkg/spoof"
	"github.com/berth-cni/berth/pkg/state"
	"github.com/berth-cni/berth/pkg/undo"
)

// Add is the ADD command: its steps, in order. Two run in the background
// while the next ones run, each waiting only on what it needs: in-process
// host-local's lease while the veth is made (it starts once the record is
// written: no record, no lease), and the masquerade while the container
// and the gateway are configured (it needs only the addresses). A failed
// step stops the ADD and everything done is undone, newest first.
func (p Plugin) Add(ctx context.Context, args *skel.CmdArgs, out io.Writer) (err error) {
	c, err := p.begin(args)
	if err != nil {
		return err
	}
	defer c.close()
	a := &addition{cmd: c}
	run := undo.NewRun(ctx)
	defer run.Finish(&err)
	a.run = run

	run.Do("container namespace", a.openContainer)
	prepared := run.Start("ipam config", a.prepareLease)
	run.Do("sweep", a.sweep)
	run.Do("record", a.record)
	lease := run.Start("lease", a.lease(prepared))
	run.Do("veth", a.attach)
	run.Do("interface up", a.upForIPAM)
	run.Wait(lease)
	run.Do("ipam", a.ipamAdd)
	run.Do("plan", a.plan)
	masq := run.Start("masquerade", a.masquerade)
	run.Do("container", a.configure)
	run.Do("gateway", a.gateways)
	run.Wait(masq)
	run.Do("recorded", a.complete)
	run.Do("result", func(context.Context, *undo.Undo) error { return printResult(a.res, c.conf.CNIVersion, out) })
	return run.Err()
}

// addition is one ADD's state, filled in by its steps.
type addition struct {
	*cmd
	run       *undo.Run
	container Container
	known     bool // a record of the attachment was there: a repeated ADD
	rec       state.Record
	prepared  Lease
	ipres     *current.Result
	br        *netlink.Bridge
	res       *current.Result
	l3        plan.L3
}

func (a *addition) openContainer(_ context.Context, u *undo.Undo) error {
	c, err := a.k.OpenContainer(a.args.Netns)
	if err != nil {
		return err
	}
	a.container = c
	u.Push("close container namespace", c.Close)
	return nil
}

// hostLocal reports whether the IPAM plugin runs in-process, so its lease
// can be taken while the veth is made. (An exec'd IPAM plugin runs after
// the veth: dhcp needs the interface up, and the others gain nothing
// measurable.)
func (a *addition) hostLocal() bool { return a.conf.IPAMConf.Type == ipam.HostLocal }

// prepareLease has in-process host-local parse its config and open its
// lease store while the attachment is looked up and recorded.
func (a *addition) prepareLease(_ context.Context, u *undo.Undo) error {
	if !a.hostLocal() {
		return nil
	}
	a.prepared = a.ipam.Prepare(a.conf.IPAMConf.Type, a.net.IPAMConf, a.at)
	u.Push("ipam config", func() error { a.prepared.Close(); return nil })
	return nil
}

func (a *addition) sweep(ctx context.Context, _ *undo.Undo) error {
	a.p.sweep(ctx, a.cmd)
	return nil
}

// record writes the attachment's record before anything of it exists, so
// that DEL, GC and the sweep find what a killed ADD made. A repeated ADD
// (a record is there) must not touch the attachment it repeats: it is
// refused before the record is rewritten. With no record nothing of this
// attachment exists, and the veth's creation refuses a taken name.
func (a *addition) record(_ context.Context, u *undo.Undo) error {
	_, known, err := a.store.Get(a.args.ContainerID, a.args.IfName)
	if err != nil {
		return err
	}
	a.known = known
	if known {
		if err := a.container.RefuseTakenIfName(a.args.IfName); err != nil {
			return err
		}
	}
	a.rec = state.Record{Network: a.conf.Name, ContainerID: a.args.ContainerID, IfName: a.args.IfName,
		Netns: a.args.Netns, HostVeth: a.owner.HostVeth()}
	if a.conf.IPMasq {
		a.rec.MasqBackend = a.masqBackend()
	}
	if err := a.store.Put(a.rec); err != nil {
		return err
	}
	// The record goes with a failed ADD unless its lease could not be
	// released: then it stays for DEL, GC and the sweep to finish, and
	// "no record, no lease" holds for the next ADD.
	u.Push("record", func() error {
		if a.run.UndoFailed(undoLease) {
			return nil
		}
		return a.store.Delete(a.args.ContainerID, a.args.IfName)
	})
	return nil
}

// undoLease names the lease's release in the rollback.
const undoLease = "ipam lease"

// lease takes in-process host-local's lease, once the record is written,
// with the config prepared meanwhile. A failed lease releases its part.
func (a *addition) lease(prepared *undo.Task) undo.Step {
	return func(ctx context.Context, u *undo.Undo) error {
		if !a.hostLocal() {
			return nil
		}
		if err := prepared.Result(); err != nil {
			return err
		}
		res, err := a.prepared.Lease(ctx, !a.known)
		if err != nil {
			return err
		}
		a.ipres = res
		u.Push(undoLease, a.release)
		return nil
	}
}

// release frees what the IPAM plugin leased to the attachment.
func (a *addition) release() error {
	return a.ipam.DelKnown(context.Background(), a.conf.IPAMConf.Type, a.net.IPAMConf, a.at, nil)
}

// attach ensures the bridge and creates the container's veth on it (and
// its macspoofchk rule). Both happen under the bridge's lock, so
// concurrent ADDs on a new bridge do not race and a failed ADD can remove
// a bridge it created without pulling it from under another container.
func (a *addition) attach(_ context.Context, u *undo.Undo) error {
	l, err := a.bridgeLock()
	if err != nil {
		return err
	}
	defer l.Unlock()
	conf := a.conf
	br, created, err := a.k.EnsureBridge(link.BridgeSpec{Name: conf.BrName, MTU: conf.MTU, Promisc: conf.PromiscMode, VlanFiltering: conf.VlanFiltering()})
	if err != nil {
		return err
	}
	if created {
		u.Push("bridge", func() error { return a.removeBridgeIfUnused() })
	}
	veth, err := a.k.AddVeth(a.container, link.VethSpec{
		Owner: a.owner, Bridge: br, MTU: conf.MTU, MAC: conf.MAC,
		Hairpin: conf.HairpinMode, Isolated: conf.PortIsolation,
		Vlan: conf.Vlan, Trunk: conf.Vlans, PreserveVID: conf.PreserveDefaultVlan,
	})
	if err != nil {
		return err
	}
	u.Push("veth", func() error { return a.k.DeleteHostVeth(veth.HostName) })
	if conf.MacSpoofChk {
		g := spoof.Guard{Owner: a.owner, HostVeth: veth.HostName, MAC: veth.ContainerMAC}
		if err := a.k.EnsureSpoof(g); err != nil {
			return err
		}
		u.Push("macspoofchk", func() error { return a.k.DeleteSpoof(a.owner, nil) })
	}
	a.br = br
	a.res = &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.HardwareAddr.String()},
			{Name: veth.HostName, Mac: veth.HostMAC.String()},
			{Name: a.args.IfName, Mac: veth.ContainerMAC.String(), Sandbox: a.args.Netns},
		},
	}
	return nil
}

func (a *addition) removeBridgeIfUnused() error {
	l, err := a.bridgeLock()
	if err != nil {
		return err
	}
	defer l.Unlock()
	return a.k.DeleteBridgeIfUnused(a.conf.BrName)
}

// upForIPAM brings the container interface up now where nothing later
// would, or where the IPAM plugin needs it: with no IPAM (layer 2 only),
// and for a plugin that talks through the interface (dhcp: its first
// packet must not go to a link whose queue the kernel has not started).
func (a *addition) upForIPAM(context.Context, *undo.Undo) error {
	if a.conf.DisableContainerInterface || a.conf.IPAMConf.Type != "" && !ipam.NeedsInterface(a.conf.IPAMConf.Type) {
		return nil
	}
	return a.container.Configure(plan.Container{IfName: a.args.IfName, Up: true})
}

// ipamAdd runs the IPAM plugin's ADD when it is exec'd (in-process
// host-local has leased already).
func (a *addition) ipamAdd(ctx context.Context, u *undo.Undo) error {
	if a.conf.IPAMConf.Type == "" || a.hostLocal() {
		return nil
	}
	res, err := a.ipam.Prepare(a.conf.IPAMConf.Type, a.net.IPAMConf, a.at).Lease(ctx, false)
	if err != nil {
		return err
	}
	a.ipres = res
	u.Push(undoLease, a.release)
	return nil
}

// plan turns the IPAM result into the container's addresses and routes
// and the gateway addresses.
func (a *addition) plan(context.Context, *undo.Undo) error {
	if a.ipres == nil {
		return nil // no IPAM
	}
	a.res.IPs, a.res.Routes, a.res.DNS = a.ipres.IPs, a.ipres.Routes, a.ipres.DNS
	l3, err := plan.PlanL3(a.res, plan.Gateway{IsGW: a.conf.IsGW, IsDefaultGW: a.conf.IsDefaultGW}, 2)
	if err != nil {
		return err
	}
	a.l3 = l3
	return nil
}

// masquerade programs the masquerade of the container's addresses (host
// netfilter, under its own lock). Its undo waits for it: never delete
// under a running Add.
func (a *addition) masquerade(_ context.Context, u *undo.Undo) error {
	if !a.conf.IPMasq || len(a.l3.Addrs) == 0 {
		return nil
	}
	b, err := a.k.Masq(a.rec.MasqBackend)
	if err != nil {
		return err
	}
	m := nat.Masq{Owner: a.owner, Addrs: a.masqAddrs(a.l3.Addrs)}
	u.Push("masquerade", func() error { return b.Delete(m.Owner) })
	return b.Add(m)
}

// configure gives the container interface its addresses and routes.
func (a *addition) configure(context.Context, *undo.Undo) error {
	if len(a.l3.Addrs) == 0 {
		return nil
	}
	return a.container.Configure(plan.Container{IfName: a.args.IfName, Addrs: a.l3.Addrs, Routes: a.l3.Routes, DAD: a.conf.EnableDad})
}

// gateways puts the gateway addresses on the bridge, or with vlan on the
// VLAN's gateway interface "<bridge>.<vlan>" (listed in the result, as
// upstream lists it), and turns on forwarding, under the bridge's lock
// (forceAddress replaces addresses). The bridge attach ensured stays (the
// container's veth is on it); its MTU may have dropped with the new port,
// so the VLAN gateway, made with the bridge's MTU, reads it afresh.
func (a *addition) gateways(context.Context, *undo.Undo) error {
	if len(a.l3.Gateways) == 0 {
		return nil
	}
	l, err := a.bridgeLock()
	if err != nil {
		return err
	}
	defer l.Unlock()
	var holder netlink.Link = a.br
	if a.conf.Vlan != 0 {
		br, _, err := a.k.EnsureBridge(link.BridgeSpec{Name: a.conf.BrName})
		if err != nil {
			return err
		}
		if holder, err = a.k.EnsureVlanGateway(br, a.conf.Vlan, a.conf.PreserveDefaultVlan); err != nil {
			return err
		}
		a.res.Interfaces = append(a.res.Interfaces, &current.Interface{Name: holder.Attrs().Name, Mac: holder.Attrs().HardwareAddr.String()})
	}
	for _, gw := range a.l3.Gateways {
		if err := a.k.EnsureGatewayAddr(holder, gw, a.conf.ForceAddress); err != nil {
			return err
		}
		if err := a.k.EnableForwarding(gw.Addr()); err != nil {
			return err
		}
	}
	return nil
}

// complete records the finished attachment with its addresses, and sets
// the config's DNS in the result.
func (a *addition) complete(context.Context, *undo.Undo) error {
	if d := a.conf.DNS; d.Nameservers != nil || d.Search != nil || d.Options != nil || d.Domain != "" {
		a.res.DNS = d
	}
	for _, p := range a.l3.Addrs {
		a.rec.IPs = append(a.rec.IPs, p.String())
	}
	a.rec.Complete = true
	return a.store.Put(a.rec)
}
