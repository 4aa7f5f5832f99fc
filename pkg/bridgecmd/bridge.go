// Package bridgecmd is the bridge plugin's ADD, DEL, CHECK, GC and STATUS:
// containers on a Linux bridge through veths, addresses from the IPAM
// plugin, the bridge as their gateway, masquerade out. The bridge plugin
// runs it over its own config; the overlay plugin over a bridge config it
// derives from the node agent's state. It touches, in the host namespace of
// the calling thread, the bridge, the host veths, the masquerade and
// macspoofchk netfilter state, and, in the container's namespace, the
// container's interface; files: attachment records under the data dir and
// flocks under /run/berth/lock.
package bridgecmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sync"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/plan"
	"github.com/berth-cni/berth/pkg/spoof"
	"github.com/berth-cni/berth/pkg/state"
	"github.com/berth-cni/berth/pkg/trace"
	"github.com/berth-cni/berth/pkg/undo"
)

// lockWait bounds how long an ADD waits for the bridge lock before it
// answers "try again later" (code 11).
const lockWait = 30 * time.Second

// Plugin is the bridge plugin's commands, run over the bridge config its
// Load makes. The bridge plugin parses its stdin as is (Bridge); the overlay
// plugin derives a bridge config from its own and the node agent's state.
type Plugin struct {
	// Name prefixes log lines and STATUS errors: "bridge", "overlay".
	Name string
	// Load turns a command's arguments into the bridge config and the
	// arguments to run with; the IPAM plugin is handed the returned
	// arguments' StdinData.
	Load func(args *skel.CmdArgs) (*config.Bridge, *skel.CmdArgs, error)
}

// Bridge is the bridge plugin: its stdin is a bridge config.
var Bridge = Plugin{Name: "bridge", Load: func(args *skel.CmdArgs) (*config.Bridge, *skel.CmdArgs, error) {
	conf, err := config.ParseBridge(args.StdinData, args.Args)
	return conf, args, err
}}

// load parses the config and the runtime arguments every command needs.
func (p Plugin) load(args *skel.CmdArgs) (*config.Bridge, *skel.CmdArgs, link.Owner, error) {
	conf, args, err := p.Load(args)
	if err != nil {
		return nil, nil, link.Owner{}, err
	}
	if err := config.ValidateContainerID(args.ContainerID); err != nil {
		return nil, nil, link.Owner{}, err
	}
	if err := config.ValidateIfName(args.IfName); err != nil {
		return nil, nil, link.Owner{}, err
	}
	return conf, args, link.Owner{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}, nil
}

// Add is the ADD command.
func (p Plugin) Add(ctx context.Context, args *skel.CmdArgs, out io.Writer) (err error) {
	conf, args, owner, err := p.load(args)
	if err != nil {
		return err
	}
	var masq nat.Backend
	masqName := ""
	if conf.IPMasq {
		masqName = backendName(conf)
		if masq, err = nat.New(masqName); err != nil {
			return err
		}
	}
	netns, err := link.OpenContainerNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()

	var steps undo.Stack
	defer steps.OnError(&err)

	// In-process host-local parses its config and opens its lease store
	// while the attachment is looked up and recorded; it leases once the
	// record is written (no record, no lease), while the veth is made.
	// (An exec'd IPAM plugin runs after the veth: dhcp needs the interface
	// up, and the others gain nothing measurable.)
	var lease *pendingLease
	if conf.IPAMConf.Type == ipam.HostLocal {
		lease = prepareLease(ctx, conf.IPAMConf.Type, args.StdinData)
		defer lease.abort()
	}

	store := state.Open(conf.DataDir, conf.Name)
	p.sweep(ctx, conf, args.StdinData, store)
	// No record: no lease either (the record is written before the IPAM
	// ADD and removed only after its DEL succeeded).
	_, known, err := store.Get(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	// A repeated ADD must not touch the attachment it repeats: refuse it
	// before the record is rewritten. With no record nothing of this
	// attachment exists, and the veth's creation refuses a taken name.
	if known {
		if err := link.RefuseTakenIfName(netns, args.IfName); err != nil {
			return err
		}
	}
	rec := state.Record{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName,
		Netns: args.Netns, HostVeth: link.HostVethName(owner), MasqBackend: masqName}
	if err := store.Put(rec); err != nil {
		return err
	}
	trace.Step("record")
	// The record goes with a failed ADD unless its lease could not be
	// released: then it stays for DEL, GC and the sweep to finish, and
	// "no record, no lease" holds for the next ADD.
	leaseKept := false
	steps.Push("attachment record", func() error {
		if leaseKept {
			return nil
		}
		return store.Delete(args.ContainerID, args.IfName)
	})

	ipamAdd := ipam.AddNew
	if known {
		ipamAdd = ipam.Add
	}
	releaseLease := func() error {
		err := ipam.Del(ctx, conf.IPAMConf.Type, args.StdinData)
		leaseKept = err != nil
		return err
	}
	var leased func() (*current.Result, error)
	if lease != nil {
		lease.begin(!known)
		leased = lease.result
		steps.Push("ipam", func() error {
			if _, err := leased(); err != nil {
				return nil // nothing leased (a failed lease releases its part)
			}
			return releaseLease()
		})
	}

	br, veth, err := attach(conf, owner, netns, &steps)
	if err != nil {
		return err
	}
	trace.Step("veth")
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: br.Name, Mac: br.HardwareAddr.String()},
			{Name: veth.HostName, Mac: veth.HostMAC.String()},
			{Name: args.IfName, Mac: veth.ContainerMAC.String(), Sandbox: args.Netns},
		},
	}
	if conf.IPAMConf.Type == "" {
		if !conf.DisableContainerInterface {
			err = link.ConfigureContainer(netns, link.ContainerSpec{IfName: args.IfName, Up: true})
		}
		return finish(err, res, conf, store, rec, out)
	}

	if ipam.NeedsInterface(conf.IPAMConf.Type) && !conf.DisableContainerInterface {
		// Up now: the plugin's first packet (dhcp's DISCOVER) is not
		// sent on a link whose queue the kernel has not yet started.
		if err := link.ConfigureContainer(netns, link.ContainerSpec{IfName: args.IfName, Up: true}); err != nil {
			return err
		}
	}
	var ipres *current.Result
	if leased != nil {
		if ipres, err = leased(); err != nil {
			return err
		}
	} else {
		if ipres, err = ipamAdd(ctx, conf.IPAMConf.Type, args.StdinData); err != nil {
			return err
		}
		steps.Push("ipam", releaseLease)
	}
	trace.Step("lease")
	res.IPs, res.Routes, res.DNS = ipres.IPs, ipres.Routes, ipres.DNS
	l3, err := plan.PlanL3(res, plan.Gateway{IsGW: conf.IsGW, IsDefaultGW: conf.IsDefaultGW}, 2)
	if err != nil {
		return err
	}
	// The masquerade (host netfilter, its own lock) needs nothing but the
	// addresses: it runs while the container and the gateway are set up.
	masqDone := func() error { return nil }
	if masq != nil {
		m := nat.Masq{Owner: natOwner(owner), Addrs: masqAddrs(conf, l3.Addrs)}
		added := async(func() (struct{}, error) { return struct{}{}, masq.Add(m) })
		masqDone = func() error { _, err := added(); return err }
		steps.Push("masquerade", func() error {
			_ = masqDone() // never delete under a running Add
			return masq.Delete(m.Owner)
		})
	}
	spec := link.ContainerSpec{IfName: args.IfName, Addrs: l3.Addrs, Routes: l3.Routes, DAD: conf.EnableDad}
	if err := link.ConfigureContainer(netns, spec); err != nil {
		return err
	}
	trace.Step("container")
	if gwIface, err := ensureGateways(conf, br, l3.Gateways); err != nil {
		return err
	} else if gwIface != nil {
		res.Interfaces = append(res.Interfaces, gwIface)
	}
	trace.Step("gateway")
	if err := masqDone(); err != nil {
		return err
	}
	trace.Step("masquerade")
	for _, p := range l3.Addrs {
		rec.IPs = append(rec.IPs, p.String())
	}
	return finish(nil, res, conf, store, rec, out)
}

// async runs fn in a goroutine (on a thread of the host's namespace: a
// thread enters the container's only while locked to the goroutine that
// switched it) and returns a function that waits for its result, as often
// as called.
func async[T any](fn func() (T, error)) func() (T, error) {
	done := make(chan struct{})
	var v T
	var err error
	go func() {
		defer close(done)
		v, err = fn()
	}()
	return func() (T, error) {
		<-done
		return v, err
	}
}

// pendingLease is an IPAM ADD prepared in a goroutine that waits for
// begin (lease, fresh as ipam.AddNew promises) or abort (no lease).
type pendingLease struct {
	start  chan bool
	once   sync.Once
	result func() (*current.Result, error)
}

var errNoLease = errors.New("no lease taken: the ADD ended before its record was written")

func prepareLease(ctx context.Context, plugin string, netconf []byte) *pendingLease {
	l := &pendingLease{start: make(chan bool, 1)}
	l.result = async(func() (*current.Result, error) {
		p := ipam.Prepare(plugin, netconf)
		fresh, ok := <-l.start
		if !ok {
			p.Close()
			return nil, errNoLease
		}
		return p.Lease(ctx, fresh)
	})
	return l
}

func (l *pendingLease) begin(fresh bool) {
	l.once.Do(func() { l.start <- fresh; close(l.start) })
}

func (l *pendingLease) abort() { l.once.Do(func() { close(l.start) }) }

// finish records the completed attachment and prints the result in the
// config's version.
func finish(err error, res *current.Result, conf *config.Bridge, store state.Store, rec state.Record, out io.Writer) error {
	if err != nil {
		return err
	}
	if conf.DNS.Nameservers != nil || conf.DNS.Search != nil || conf.DNS.Options != nil || conf.DNS.Domain != "" {
		res.DNS = conf.DNS
	}
	rec.Complete = true
	if err := store.Put(rec); err != nil {
		return err
	}
	trace.Step("recorded")
	vres, err := res.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return fmt.Errorf("convert result to %s: %w", conf.CNIVersion, err)
	}
	return vres.PrintTo(out)
}

// attach ensures the bridge and creates the container's veth on it. Both
// happen under the bridge's lock, so concurrent ADDs on a new bridge do
// not race and a failed ADD can remove a bridge it created without
// pulling it from under another container.
func attach(conf *config.Bridge, owner link.Owner, netns ns.NetNS, steps *undo.Stack) (*netlink.Bridge, link.Veth, error) {
	l, err := lock.Acquire("bridge-"+conf.BrName, lockWait)
	if err != nil {
		return nil, link.Veth{}, err
	}
	defer l.Unlock()
	br, created, err := link.EnsureBridge(link.BridgeSpec{Name: conf.BrName, MTU: conf.MTU, Promisc: conf.PromiscMode, VlanFiltering: conf.VlanFiltering()})
	if err != nil {
		return nil, link.Veth{}, err
	}
	if created {
		steps.Push("bridge", func() error { return removeBridgeIfUnused(conf.BrName) })
	}
	trace.Step("bridge")
	veth, err := link.AddVeth(link.VethSpec{
		Owner: owner, Bridge: br, ContainerNS: int(netns.Fd()), MTU: conf.MTU, MAC: conf.MAC,
		Hairpin: conf.HairpinMode, Isolated: conf.PortIsolation,
		Vlan: conf.Vlan, Trunk: conf.Vlans, PreserveVID: conf.PreserveDefaultVlan,
	})
	if err != nil {
		return nil, link.Veth{}, err
	}
	steps.Push("veth", func() error { return link.DeleteHostVeth(veth.HostName) })
	if conf.MacSpoofChk {
		g := spoof.Guard{Owner: spoofOwner(owner), HostVeth: veth.HostName, MAC: veth.ContainerMAC}
		if err := spoof.Ensure(g); err != nil {
			return nil, link.Veth{}, err
		}
		steps.Push("macspoofchk", func() error { return spoof.Delete(g.Owner) })
	}
	return br, veth, nil
}

func removeBridgeIfUnused(name string) error {
	l, err := lock.Acquire("bridge-"+name, lockWait)
	if err != nil {
		return err
	}
	defer l.Unlock()
	return link.DeleteBridgeIfUnused(name)
}

// ensureGateways puts the gateway addresses on the bridge, or with vlan
// on the VLAN's gateway interface "<bridge>.<vlan>" (returned, for the
// result, as upstream lists it), and turns on forwarding, under the
// bridge's lock (forceAddress replaces addresses). br is the bridge attach
// ensured: it stays, as the container's veth is on it (its index and name
// hold; its MTU may have dropped with the new port, so the VLAN gateway,
// made with the bridge's MTU, reads it afresh).
func ensureGateways(conf *config.Bridge, br *netlink.Bridge, gws []netip.Prefix) (*current.Interface, error) {
	if len(gws) == 0 {
		return nil, nil
	}
	l, err := lock.Acquire("bridge-"+conf.BrName, lockWait)
	if err != nil {
		return nil, err
	}
	defer l.Unlock()
	var holder netlink.Link = br
	var iface *current.Interface
	if conf.Vlan != 0 {
		if br, _, err = link.EnsureBridge(link.BridgeSpec{Name: conf.BrName}); err != nil {
			return nil, err
		}
		if holder, err = link.EnsureVlanGateway(br, conf.Vlan, conf.PreserveDefaultVlan); err != nil {
			return nil, err
		}
		iface = &current.Interface{Name: holder.Attrs().Name, Mac: holder.Attrs().HardwareAddr.String()}
	}
	for _, gw := range gws {
		if err := link.EnsureGatewayAddr(holder, gw, conf.ForceAddress); err != nil {
			return nil, err
		}
		if err := link.EnableForwarding(gw.Addr()); err != nil {
			return nil, err
		}
	}
	return iface, nil
}

// Del is the DEL command.
func (p Plugin) Del(ctx context.Context, args *skel.CmdArgs) error {
	conf, args, owner, err := p.load(args)
	if err != nil {
		return err
	}
	store := state.Open(conf.DataDir, conf.Name)
	rec, found, err := store.Get(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	// The steps each wait on something else (the kernel's RCU grace
	// periods when a veth or an nft set element goes, the IPAM plugin's
	// exec), so they run at once: DEL takes as long as the slowest, not
	// the sum. Only an IPAM plugin that talks through the container's
	// interface (ipam.NeedsInterface: dhcp's RELEASE) is released before
	// the veth goes; other IPAM plugins release in their own files. Every step runs even if another
	// fails, a missing object is success, and none needs the container's
	// namespace (the host veth name derives from the owner; nft state is
	// tagged).
	unplug := func() error { return link.DeleteHostVeth(link.HostVethName(owner)) }
	release := func() error { return ipam.DelKnown(ctx, conf.IPAMConf.Type, args.StdinData, recordedAddrs(rec)) }
	unmasq := func() error {
		if !found {
			return deleteMasq(natOwner(owner))
		}
		if rec.MasqBackend == "" {
			return nil
		}
		// The record names the backend the ADD used: no need to sweep
		// (and fork iptables-save for) the others.
		return deleteMasqIn(rec.MasqBackend, natOwner(owner))
	}
	steps := []func() error{unplug, unmasq}
	switch {
	case conf.IPAMConf.Type == "":
	case ipam.NeedsInterface(conf.IPAMConf.Type):
		steps[0] = func() error { return errors.Join(release(), unplug()) }
	default:
		steps = append(steps, release)
	}
	if conf.MacSpoofChk {
		steps = append(steps, func() error { return spoof.Delete(spoofOwner(owner)) })
	}
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, step := range steps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = step()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return store.Delete(args.ContainerID, args.IfName)
}

// recordedAddrs are the addresses a complete record lists; none for an
// unfinished ADD (its IPAM result was never recorded).
func recordedAddrs(rec state.Record) []netip.Addr {
	if !rec.Complete {
		return nil
	}
	var out []netip.Addr
	for _, s := range rec.IPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil // not berth's writing: let the IPAM plugin search
		}
		out = append(out, p.Addr())
	}
	return out
}

// deleteMasq removes the owner's masquerade state from every backend it
// may be in, for when no record says which: the config's backend may have
// changed since the ADD.
func deleteMasq(o nat.Owner) error {
	var errs []error
	for _, name := range []string{nat.NFTables, nat.IPTables} {
		if nat.Available(name) {
			errs = append(errs, deleteMasqIn(name, o))
		}
	}
	return errors.Join(errs...)
}

func deleteMasqIn(backend string, o nat.Owner) error {
	b, err := nat.New(backend)
	if err != nil {
		return err
	}
	return b.Delete(o)
}

// Status is the STATUS command.
func (p Plugin) Status(ctx context.Context, args *skel.CmdArgs) error {
	conf, args, err := p.Load(args)
	if err != nil {
		return err
	}
	if conf.IPMasq {
		b, err := nat.New(backendName(conf))
		if err != nil {
			return p.notAvailable(err)
		}
		if _, err := b.List(conf.Name); err != nil {
			return p.notAvailable(err)
		}
	}
	if conf.IPAMConf.Type != "" {
		if err := ipam.Status(ctx, conf.IPAMConf.Type, args.StdinData); err != nil {
			return p.notAvailable(err)
		}
	}
	return nil
}

func backendName(conf *config.Bridge) string {
	if conf.IPMasqBackend != nil {
		return *conf.IPMasqBackend
	}
	host, err := netns.Host()
	if err != nil {
		return nat.NFTables
	}
	defer host.Close()
	return nat.Detect(host)
}

func spoofOwner(o link.Owner) spoof.Owner {
	return spoof.Owner{Network: o.Network, ContainerID: o.ContainerID, IfName: o.IfName}
}

func natOwner(o link.Owner) nat.Owner {
	return nat.Owner{Network: o.Network, ContainerID: o.ContainerID, IfName: o.IfName}
}

// notAvailable marks a STATUS failure with the spec's code 50.
func (p Plugin) notAvailable(err error) error {
	return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("%s cannot serve ADD: %w", p.Name, err))
}

// masqAddrs is what to masquerade for the container's addresses: each
// address with its subnet, or with conf.MasqExempt's length when that
// prefix holds it, so traffic to the whole exempt network keeps its source.
func masqAddrs(conf *config.Bridge, addrs []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		out[i] = a
		if e := conf.MasqExempt; e.IsValid() && e.Bits() < a.Bits() && e.Contains(a.Addr()) {
			out[i] = netip.PrefixFrom(a.Addr(), e.Bits())
		}
	}
	return out
}
