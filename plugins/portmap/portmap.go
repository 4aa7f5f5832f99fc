package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/undo"
)

// lockWait bounds the wait for the reservations' lock; past it the ADD
// answers "try again later" (code 11).
const lockWait = 30 * time.Second

func load(args *skel.CmdArgs) (*config.Portmap, owner.Owner, error) {
	conf, err := config.ParsePortmap(args.StdinData)
	if err != nil {
		return nil, owner.Owner{}, err
	}
	if err := config.ValidateContainerID(args.ContainerID); err != nil {
		return nil, owner.Owner{}, err
	}
	if err := config.ValidateIfName(args.IfName); err != nil {
		return nil, owner.Owner{}, err
	}
	return conf, owner.Owner{Network: conf.Name, ContainerID: args.ContainerID, IfName: args.IfName}, nil
}

func backendOf(host *netns.NS, conf *config.Portmap) string {
	if conf.Backend != nil {
		return *conf.Backend
	}
	return hostport.DefaultBackend(host)
}

func add(ctx context.Context, args *skel.CmdArgs, out io.Writer) (err error) {
	conf, owner, err := load(args)
	if err != nil {
		return err
	}
	prev := conf.Prev
	if prev == nil {
		return cnierr.Field("prevResult", "(none)", "portmap is a chained plugin: put it after bridge, macvlan or overlay in a conflist")
	}
	if onlyLoopback(prev) {
		return cnierr.Field("prevResult", "(loopback only)", "the plugin before portmap gave the container no network (null?): there is nothing to map host ports to")
	}
	if len(conf.Mappings) == 0 {
		return printResult(prev, conf.CNIVersion, out)
	}
	host, err := netns.Host()
	if err != nil {
		return err
	}
	defer host.Close()
	targets := containerTargets(prev, args.IfName)
	a := hostport.Attachment{Owner: owner, Targets: targets, SNAT: *conf.SNAT, MasqAll: conf.MasqAll, Backend: backendOf(host, conf)}
	for i, m := range conf.Mappings {
		hm := hostport.Mapping{Key: hostport.Key{Proto: m.Protocol, Addr: m.HostIP, Port: m.HostPort}, ContainerPort: m.ContainerPort}
		if err := reachable(i, hm, a); err != nil {
			return err
		}
		a.Mappings = append(a.Mappings, hm)
	}
	dp, err := hostport.NewDatapath(host, a.Backend, conf)
	if err != nil {
		return err
	}

	store := hostport.Open(conf.DataDir)
	l, err := store.Lock(lockWait)
	if err != nil {
		return err
	}
	defer l.Unlock()
	if err := store.Conflict(a); err != nil {
		return err
	}
	if err := hostport.CheckBound(host, a.Mappings); err != nil {
		return err
	}
	var steps undo.Stack
	defer steps.OnError(&err)
	// Before the claim, what this holder held already (a retry): an
	// undo must not free that.
	before, held, err := store.Held(owner)
	if err != nil {
		return err
	}
	crashPoint(args, "before-claim")
	if err := store.Claim(a); err != nil {
		return err
	}
	crashPoint(args, "after-claim")
	steps.Push("reservations", func() error {
		if held {
			return store.Revert(before, a)
		}
		return store.Release(a)
	})
	if err := dp.Add(a); err != nil {
		return err
	}
	crashPoint(args, "after-datapath")
	steps.Push("datapath", func() error {
		if held {
			return errors.Join(dp.Remove(a), dp.Add(before))
		}
		return dp.Remove(a)
	})
	if a.SNAT {
		if t, ok := a.Target(false); ok {
			if err := hostport.EnableLocalnet(host, t.Addr()); err != nil {
				return err
			}
		}
	}
	// The mapping works without this: a failure to clear old UDP flows
	// is reported on stderr, not as a failed ADD.
	if err := hostport.FlushUDP(host, a.Mappings); err != nil {
		log.Printf("portmap: %v", err)
	}
	return printResult(prev, conf.CNIVersion, out)
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
		p, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		p = p.Unmap()
		ones, _ := ip.Address.Mask.Size()
		pre := netip.PrefixFrom(p, ones)
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

// del frees what this attachment holds, from its index: no prevResult or
// mappings needed (nerdctl sends DEL before every ADD, with none). Another
// attachment's ports are never touched.
func del(ctx context.Context, args *skel.CmdArgs) error {
	conf, owner, err := load(args)
	if err != nil {
		return err
	}
	host, err := netns.Host()
	if err != nil {
		return err
	}
	defer host.Close()
	store := hostport.Open(conf.DataDir)
	l, err := store.Lock(lockWait)
	if err != nil {
		return err
	}
	defer l.Unlock()
	return release(host, store, conf, owner)
}

// release removes o's datapath state, then its reservations. The
// caller holds the store lock.
func release(host *netns.NS, store hostport.Store, conf *config.Portmap, o owner.Owner) error {
	held, found, err := store.Held(o)
	if err != nil || !found {
		return err
	}
	dp, err := hostport.NewDatapath(host, held.Backend, conf)
	if err != nil {
		return err
	}
	if err := dp.Remove(held); err != nil {
		return err
	}
	return store.Release(held)
}

// check verifies that every mapping of the config is held by this
// attachment and forwarded to it.
func check(ctx context.Context, args *skel.CmdArgs) error {
	conf, owner, err := load(args)
	if err != nil {
		return err
	}
	if conf.Prev == nil {
		return cnierr.Field("prevResult", "(none)", "CHECK needs the prevResult of the chain")
	}
	if len(conf.Mappings) == 0 {
		return nil
	}
	store := hostport.Open(conf.DataDir)
	held, found, err := store.Held(owner)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("portmap: container %s (interface %s) holds no host port; want %s", owner.ContainerID, owner.IfName, conf.Mappings[0])
	}
	for _, m := range conf.Mappings {
		k := hostport.Key{Proto: m.Protocol, Addr: m.HostIP, Port: m.HostPort}
		ok := false
		for _, h := range held.Mappings {
			if h.Key == k && h.ContainerPort == m.ContainerPort {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("portmap: container %s does not hold host port %s", owner.ContainerID, m)
		}
	}
	claims, err := store.Claims()
	if err != nil {
		return err
	}
	for _, h := range held.Mappings {
		found := false
		for _, c := range claims {
			if c.Key() == h.Key && c.Owner() == owner {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("portmap: the reservation of host port %s by container %s is missing from %s", h.Key, owner.ContainerID, store.Dir())
		}
	}
	host, err := netns.Host()
	if err != nil {
		return err
	}
	defer host.Close()
	dp, err := hostport.NewDatapath(host, held.Backend, conf)
	if err != nil {
		return err
	}
	return dp.Check(held)
}

// gc frees the ports of every attachment of this network that is not in
// cni.dev/valid-attachments.
func gc(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := config.ParsePortmap(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[owner.Owner]bool{}
	for _, a := range conf.ValidAttachments {
		valid[owner.Owner{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	host, err := netns.Host()
	if err != nil {
		return err
	}
	defer host.Close()
	store := hostport.Open(conf.DataDir)
	l, err := store.Lock(lockWait)
	if err != nil {
		return err
	}
	defer l.Unlock()
	holders, err := store.Holders()
	errs := []error{err}
	for _, h := range holders {
		if h.Owner.Network != conf.Name || valid[h.Owner] {
			continue
		}
		errs = append(errs, release(host, store, conf, h.Owner))
	}
	return errors.Join(errs...)
}

// status reports code 50 when ports cannot be published: the reservation
// directory cannot be locked or the backend cannot run.
func status(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := config.ParsePortmap(args.StdinData)
	if err != nil {
		return err
	}
	store := hostport.Open(conf.DataDir)
	l, err := store.Lock(5 * time.Second)
	if err != nil {
		return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("portmap cannot serve ADD: %w", err))
	}
	l.Unlock()
	host, err := netns.Host()
	if err != nil {
		return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("portmap cannot serve ADD: %w", err))
	}
	defer host.Close()
	if b := backendOf(host, conf); !hostport.BackendAvailable(b) {
		return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("portmap cannot serve ADD: backend %s is not available here", b))
	}
	return nil
}

// crashPoint kills the plugin with SIGKILL at the named point of ADD when
// CNI_ARGS has BERTH_TEST_KILL=<point>: the tests' way to leave the state
// of a plugin killed mid-ADD (no deferred undo runs, as with kill -9).
// Runtimes never set it.
func crashPoint(args *skel.CmdArgs, point string) {
	for _, kv := range strings.Split(args.Args, ";") {
		if kv == "BERTH_TEST_KILL="+point {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
}
