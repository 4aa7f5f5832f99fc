package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"strings"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// demo holds what the run made, so that cleanup can undo it.
type demo struct {
	out     *printer
	bin     string
	confDir string
	tmp     string
	log     io.Writer

	world    *lab.World
	runner   *lab.Runner
	underlay *lab.Underlay // the overlay's hosts, when that part ran
	attached []attached
}

// attached is a container attached to a network, to DEL on cleanup.
type attached struct {
	name string
	ns   *lab.NS
	r    *lab.Runner // whose host the container is on
	conf *lab.Conflist
	att  lab.Attachment
	v4   netip.Addr
	v6   netip.Addr
}

func (d *demo) run(ctx context.Context) error {
	d.out.section("berth demo: everything below happens in throwaway network namespaces; the machine's own network is not touched.")

	d.out.section("Setting up")
	w, err := lab.NewWorld(ctx, "bdemo")
	if !d.out.check("created a \"host\" namespace (plays the machine that runs containers) and an \"outside\" one (plays the internet)", err) {
		return err
	}
	d.world = w
	d.out.note("host:    %s, uplink %s, default route → outside", w.Host.Name, lab.HostUplink4)
	d.out.note("outside: %s, address %s, no route back to any container subnet", w.Outside.Name, lab.OutsideUplink4)
	d.runner = lab.NewRunner(w.Host, []string{d.bin}, filepath.Join(d.tmp, "cache"), d.log)

	bridge, err := d.conf("bridge.conflist")
	if err != nil {
		return err
	}
	null, err := d.conf("null.conflist")
	if err != nil {
		return err
	}

	d.out.section(fmt.Sprintf("Attaching containers (CNI ADD through libcni, as containerd does; plugins from %s)", d.bin))
	c1, err := d.attach(ctx, "c1", bridge)
	if err != nil {
		return err
	}
	c2, err := d.attach(ctx, "c2", bridge)
	if err != nil {
		return err
	}
	c3, err := d.attach(ctx, "c3", null)
	if err != nil {
		return err
	}

	if ctx.Err() != nil {
		return ctx.Err()
	}
	d.out.section("Two containers on the bridge talk to each other")
	d.ping(ctx, c1, c2.name, c2.v4)
	d.ping(ctx, c2, c1.name, c1.v4)
	if c1.v6.IsValid() && c2.v6.IsValid() {
		d.ping(ctx, c1, c2.name, c2.v6)
	}

	if ctx.Err() != nil {
		return ctx.Err()
	}
	d.out.section("A bridge container reaches the outside through the host (masquerade)")
	d.ping(ctx, c1, "outside", lab.OutsideUplink4.Addr())
	d.tcpOut(ctx, c1)

	if ctx.Err() != nil {
		return ctx.Err()
	}
	d.out.section("The null container has loopback only and reaches nothing")
	d.onlyLoopback(c3)
	d.noPing(ctx, c3, c1.name, c1.v4)
	d.noPing(ctx, c3, "outside", lab.OutsideUplink4.Addr())
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return d.overlay(ctx)
}

// conf loads a conflist from the repository with plugin state redirected
// into the demo's temporary directory.
func (d *demo) conf(file string) (*lab.Conflist, error) {
	c, err := lab.LoadConflist(filepath.Join(d.confDir, file), lab.ConflistOptions{
		DataDir:     filepath.Join(d.tmp, "berth"),
		IPAMDataDir: filepath.Join(d.tmp, "ipam"),
	})
	d.out.check(fmt.Sprintf("loaded %s", filepath.Join(d.confDir, file)), err)
	return c, err
}

// attach creates container name on the world's host and runs ADD for it
// on conf's network.
func (d *demo) attach(ctx context.Context, name string, conf *lab.Conflist) (*attached, error) {
	return d.attachWith(ctx, name, conf, d.runner, d.world.AddContainer)
}

// attachWith creates container name with newNS and runs ADD for it on
// conf's network through r.
func (d *demo) attachWith(ctx context.Context, name string, conf *lab.Conflist, r *lab.Runner, newNS func(context.Context, string) (*lab.NS, error)) (*attached, error) {
	ns, err := newNS(ctx, name)
	if err != nil {
		d.out.fail(fmt.Sprintf("create container namespace %s", name), err)
		return nil, err
	}
	a := &attached{name: name, ns: ns, r: r, conf: conf,
		att: lab.Attachment{ContainerID: "bdemo-" + d.world.ID + "-" + name, NetNS: ns.Path, IfName: "eth0"}}
	res, err := r.Add(ctx, conf.List, a.att)
	what := fmt.Sprintf("%s: ADD on network %q (type %s)", name, conf.List.Name, conf.List.Plugins[0].Network.Type)
	if err != nil {
		d.out.fail(what, err)
		return nil, err
	}
	d.attached = append(d.attached, *a)
	res100, err := lab.Result100(res)
	if err != nil {
		d.out.fail(what, err)
		return nil, err
	}
	var shown []string
	for _, ip := range res100.IPs {
		p, _ := netip.AddrFromSlice(ip.Address.IP)
		p = p.Unmap()
		dev := "?"
		if ip.Interface != nil && *ip.Interface >= 0 && *ip.Interface < len(res100.Interfaces) {
			dev = res100.Interfaces[*ip.Interface].Name
		}
		shown = append(shown, dev+" "+ip.Address.String())
		if dev == "lo" {
			continue
		}
		if p.Is4() && !a.v4.IsValid() {
			a.v4 = p
		} else if p.Is6() && !a.v6.IsValid() {
			a.v6 = p
		}
	}
	if len(shown) == 0 {
		shown = append(shown, "no addresses")
	}
	d.out.check(fmt.Sprintf("%s → %s", what, strings.Join(shown, ", ")), nil)
	return a, nil
}

func (d *demo) ping(ctx context.Context, from *attached, toName string, to netip.Addr) {
	err := from.ns.PingWithin(ctx, to, stepTimeout)
	if ctx.Err() != nil {
		return // interrupted: say nothing about a ping cut short
	}
	what := fmt.Sprintf("%s (%s) → %s (%s): ping", from.name, srcFor(from, to), toName, to)
	if err != nil {
		d.out.fail(what+" failed", err)
		return
	}
	d.out.check(what+" ok", nil)
}

// noPing passes when a ping gets no answer.
func (d *demo) noPing(ctx context.Context, from *attached, toName string, to netip.Addr) {
	err := from.ns.PingWithin(ctx, to, 2*time.Second)
	what := fmt.Sprintf("%s → %s (%s): ping fails, as it should", from.name, toName, to)
	if err == nil {
		d.out.fail(what, errors.New("it got a reply"))
		return
	}
	if ctx.Err() != nil {
		return // interrupted, not an answer
	}
	d.out.check(what, nil)
}

// tcpOut connects from the container to a listener in the outside and
// shows that the outside saw the host's address.
func (d *demo) tcpOut(ctx context.Context, c *attached) {
	d.tcpSeen(ctx, c, "outside", d.world.Outside, lab.OutsideUplink4.Addr(),
		lab.HostUplink4.Addr(), "the host's address, not the container's "+c.v4.String()+": masquerade")
}

// tcpSeen connects from container c to a listener on addr in ns (called
// toName) and checks the source address the listener saw is want (why
// says what that address is).
func (d *demo) tcpSeen(ctx context.Context, c *attached, toName string, ns *lab.NS, addr, want netip.Addr, why string) {
	ctx, cancel := context.WithTimeout(ctx, stepTimeout)
	defer cancel()
	ln, err := ns.ListenTCP(netip.AddrPortFrom(addr, 8080))
	if err != nil {
		d.out.fail("listen in "+toName, err)
		return
	}
	defer ln.Close()
	what := fmt.Sprintf("%s (%s) → %s (%s): TCP connect", c.name, c.v4, toName, ln.Addr)
	if _, derr := c.ns.DialTCP(ctx, ln.Addr); derr != nil {
		d.out.fail(what+" failed", derr)
		return
	}
	d.out.check(what+" ok", nil)
	remote, err := ln.Accepted(ctx)
	if err != nil {
		d.out.fail(toName+" accepts the connection", err)
		return
	}
	what = fmt.Sprintf("%s saw the connection come from %s, %s", toName, remote.Addr(), why)
	if remote.Addr() != want {
		d.out.fail(what, fmt.Errorf("want %s", want))
		return
	}
	d.out.check(what, nil)
}

func (d *demo) onlyLoopback(c *attached) {
	links, err := c.ns.Links()
	if err != nil {
		d.out.fail(c.name+": list links", err)
		return
	}
	routes, err := c.ns.Routes()
	if err != nil {
		d.out.fail(c.name+": list routes", err)
		return
	}
	var names []string
	var problems []string
	for _, l := range links {
		names = append(names, l.Name)
		if l.Name != "lo" {
			problems = append(problems, "has link "+l.Name)
		} else if !l.Up {
			problems = append(problems, "lo is down")
		}
	}
	for _, r := range routes {
		if r.Dev != "lo" {
			problems = append(problems, fmt.Sprintf("has route %s dev %s", r.Dst, r.Dev))
		}
	}
	what := fmt.Sprintf("%s has only lo, up, and no route out (links: %s)", c.name, strings.Join(names, ", "))
	if len(problems) > 0 {
		d.out.fail(what, errors.New(strings.Join(problems, "; ")))
		return
	}
	d.out.check(what, nil)
}

// srcFor returns the container's own address of to's family.
func srcFor(c *attached, to netip.Addr) netip.Addr {
	if to.Is6() {
		return c.v6
	}
	return c.v4
}

// cleanup DELs every attachment (as a runtime would when containers stop)
// and removes the namespaces; it returns only the namespace errors (each
// DEL prints its own line). It runs with its own deadline, so it also
// finishes after Ctrl-C.
func (d *demo) cleanup() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var errs []error
	for i := len(d.attached) - 1; i >= 0; i-- {
		a := d.attached[i]
		err := a.r.Del(ctx, a.conf.List, a.att)
		d.out.check(fmt.Sprintf("%s: DEL on network %q", a.name, a.conf.List.Name), err)
	}
	if d.underlay != nil {
		errs = append(errs, d.underlay.Close())
	}
	if d.world != nil {
		errs = append(errs, d.world.Close())
		if left, err := d.world.Leftovers(); err != nil || len(left) > 0 {
			errs = append(errs, fmt.Errorf("namespaces left: %v %v", left, err))
		}
	}
	return errors.Join(errs...)
}
