package portmapcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/undo"
)

// add publishes the config's port mappings for the container of the
// chain's prevResult: claim the host ports, forward them, and pass the
// prevResult on. With no mappings it does nothing but pass it on.
func add(ctx context.Context, host *netns.NS, args *skel.CmdArgs, out io.Writer) (err error) {
	conf, o, err := load(args)
	if err != nil {
		return err
	}
	prev, err := chained(conf)
	if err != nil {
		return err
	}
	if len(conf.Mappings) == 0 {
		return printResult(prev, conf.CNIVersion, out)
	}
	a, err := plan(host, conf, o)
	if err != nil {
		return err
	}
	dp, err := hostport.NewDatapath(host, a.Backend, conf)
	if err != nil {
		return err
	}
	r := &adding{args: args, host: host, store: hostport.Open(conf.DataDir), dp: dp, a: a}
	l, err := r.store.Lock(lock.Wait)
	if err != nil {
		return err
	}
	defer l.Unlock()
	defer r.steps.OnError(&err)
	if err := r.claim(); err != nil {
		return err
	}
	if err := r.forward(); err != nil {
		return err
	}
	r.clearUDPFlows()
	return printResult(prev, conf.CNIVersion, out)
}

// chained returns the prevResult, refusing a chain that gives portmap
// nothing to map ports to.
func chained(conf *config.Portmap) (*current.Result, error) {
	prev := conf.Prev
	if prev == nil {
		return nil, cnierr.Field("prevResult", "(none)", "portmap is a chained plugin: put it after bridge, macvlan or overlay in a conflist")
	}
	if onlyLoopback(prev) {
		return nil, cnierr.Field("prevResult", "(loopback only)", "the plugin before portmap gave the container no network (null?): there is nothing to map host ports to")
	}
	return prev, nil
}

// plan is the attachment the config asks for: o's addresses from the
// prevResult, the mappings (each with a container address of its
// family), the masquerade options and the backend.
func plan(host *netns.NS, conf *config.Portmap, o owner.Owner) (hostport.Attachment, error) {
	a := hostport.Attachment{Owner: o, Targets: containerTargets(conf.Prev, o.IfName), SNAT: *conf.SNAT, MasqAll: conf.MasqAll, Backend: backendOf(host, conf)}
	for i, m := range conf.Mappings {
		hm := hostport.Mapping{Key: hostport.Key{Proto: m.Protocol, Addr: m.HostIP, Port: m.HostPort}, ContainerPort: m.ContainerPort}
		if err := reachable(i, hm, a); err != nil {
			return hostport.Attachment{}, err
		}
		a.Mappings = append(a.Mappings, hm)
	}
	return a, nil
}

// adding is one ADD past its config: what its steps share. Each step
// that changes something pushes its undo.
type adding struct {
	args  *skel.CmdArgs
	host  *netns.NS
	store hostport.Store
	dp    hostport.Datapath
	a     hostport.Attachment
	// before is what the owner held before this ADD, when held (a
	// runtime retrying ADD): an undo must not free that.
	before hostport.Attachment
	held   bool
	steps  undo.Stack
}

// claim reserves a's host ports, under the store's lock (held by the
// caller): refused when another container holds one (101) or a socket of
// the host has one bound (102).
func (r *adding) claim() error {
	if err := r.store.Conflict(r.a); err != nil {
		return err
	}
	if err := hostport.CheckBound(r.host, r.a.Mappings); err != nil {
		return err
	}
	var err error
	if r.before, r.held, err = r.store.Held(r.a.Owner); err != nil {
		return err
	}
	crashPoint(r.args, "before-claim")
	if err := r.store.Claim(r.a); err != nil {
		return err
	}
	crashPoint(r.args, "after-claim")
	r.steps.Push("reservations", func() error {
		if r.held {
			return r.store.Revert(r.before, r.a)
		}
		return r.store.Release(r.a)
	})
	return nil
}

// forward programs the datapath: DNAT of the host ports to the container,
// and, with snat, route_localnet for 127.0.0.1 to reach it.
func (r *adding) forward() error {
	if err := r.dp.Add(r.a); err != nil {
		return err
	}
	crashPoint(r.args, "after-datapath")
	r.steps.Push("datapath", func() error {
		if r.held {
			return errors.Join(r.dp.Remove(r.a), r.dp.Add(r.before))
		}
		return r.dp.Remove(r.a)
	})
	if r.a.SNAT {
		if t, ok := r.a.Target(false); ok {
			return hostport.EnableLocalnet(r.host, t.Addr())
		}
	}
	return nil
}

// clearUDPFlows clears stale conntrack entries of the UDP host ports. The
// mapping works without this: a failure is reported on stderr, not as a
// failed ADD.
func (r *adding) clearUDPFlows() {
	if err := hostport.FlushUDP(r.host, r.a.Mappings); err != nil {
		log.Printf("portmap: %v", err)
	}
}

// reachable checks that mapping i has a container address of its host
// address's family.
func reachable(i int, m hostport.Mapping, a hostport.Attachment) error {
	v4, v6 := m.Families()
	_, have4 := a.Target(false)
	_, have6 := a.Target(true)
	if (v4 && have4) || (v6 && have6) {
		return nil
	}
	fam := "IPv4"
	if !v4 {
		fam = "IPv6"
	}
	if len(a.Targets) == 0 {
		return cnierr.Field("prevResult", "(no addresses)", "the container has no address on interface %s to map host ports to", a.Owner.IfName)
	}
	return cnierr.Field(fmt.Sprintf("runtimeConfig.portMappings[%d].hostIP", i), m.Addr.String(),
		"is %s but the container has no %s address on %s", fam, fam, a.Owner.IfName)
}

// containerTargets picks the container's addresses (one per family, the
// first) from the result: those on the sandbox interface named ifName, or
// those on no interface at all.
func containerTargets(res *current.Result, ifName string) []netip.Prefix {
	var out []netip.Prefix
	var have4, have6 bool
	for _, ip := range res.IPs {
		if ip.Interface != nil {
			i := *ip.Interface
			if i < 0 || i >= len(res.Interfaces) || res.Interfaces[i].Name != ifName || res.Interfaces[i].Sandbox == "" {
				continue
			}
		}
		pre, ok := cidr.Prefix(&ip.Address)
		if !ok {
			continue
		}
		p := pre.Addr()
		if p.Is4() && !have4 {
			have4 = true
			out = append(out, pre)
		} else if p.Is6() && !have6 && !p.IsLinkLocalUnicast() {
			have6 = true
			out = append(out, pre)
		}
	}
	return out
}

// onlyLoopback reports a result whose interfaces are all loopback and
// whose addresses are all loopback addresses: what null returns.
func onlyLoopback(res *current.Result) bool {
	if len(res.Interfaces) == 0 {
		return false
	}
	for _, i := range res.Interfaces {
		if i.Name != "lo" {
			return false
		}
	}
	for _, ip := range res.IPs {
		if !ip.Address.IP.IsLoopback() {
			return false
		}
	}
	return true
}

func printResult(res *current.Result, version string, out io.Writer) error {
	v, err := res.GetAsVersion(version)
	if err != nil {
		return fmt.Errorf("convert result to %s: %w", version, err)
	}
	return v.PrintTo(out)
}
