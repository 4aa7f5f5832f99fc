package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// bridgePlugins are the binaries bridge.conflist runs.
var bridgePlugins = []string{"bridge", "host-local"}

// The gateways bridge.conflist implies: the first address of each range.
var (
	gw4 = netip.MustParseAddr("10.88.0.1")
	gw6 = netip.MustParseAddr("fd00:88::1")
)

// Three containers on one bridge reach each other and the gateway, over
// IPv4 and IPv6; the result has the shape CNI 1.1 asks for.
func TestBridgeThreeContainers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.bridgeConf()
	cs := e.addContainers(ctx, conf, "c1", "c2", "c3")

	for _, c := range cs {
		checkResultShape(t, e, c)
	}
	var pairs []pingPair
	for _, from := range cs {
		pairs = append(pairs, pingPair{from, gw4, "gateway"}, pingPair{from, gw6, "gateway"})
		for _, to := range cs {
			if to != from {
				pairs = append(pairs, pingPair{from, to.v4.Addr(), to.name}, pingPair{from, to.v6.Addr(), to.name})
			}
		}
	}
	pingAll(ctx, t, pairs)
}

// checkResultShape checks a 1.x result against the container and host:
// interfaces [bridge, host veth, container iface in its sandbox], each
// address on the container interface with the gateway, and default routes.
func checkResultShape(t *testing.T, e *env, c *container) {
	t.Helper()
	res, err := lab.Result100(c.res)
	if err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	if got := c.res.Version(); got != "1.1.0" {
		t.Errorf("%s: result version %s, want 1.1.0", c, got)
	}
	if len(res.Interfaces) != 3 {
		t.Fatalf("%s: result has %d interfaces, want 3 (bridge, host veth, container): %v", c, len(res.Interfaces), res)
	}
	br, hv, ct := res.Interfaces[0], res.Interfaces[1], res.Interfaces[2]
	if br.Name != "berth0" || br.Sandbox != "" {
		t.Errorf("%s: interfaces[0] = %+v, want the bridge berth0 with no sandbox", c, *br)
	}
	if !strings.HasPrefix(hv.Name, lab.HostVethPrefix) || hv.Sandbox != "" {
		t.Errorf("%s: interfaces[1] = %+v, want a host veth %s… with no sandbox", c, *hv, lab.HostVethPrefix)
	}
	if ct.Name != "eth0" || ct.Sandbox != c.ns.Path {
		t.Errorf("%s: interfaces[2] = %+v, want eth0 in sandbox %s", c, *ct, c.ns.Path)
	}
	// The host veth is a port of the bridge and carries the attachment alias.
	if l, lerr := e.w.Host.LinkByName(hv.Name); lerr != nil {
		t.Errorf("%s: %v", c, lerr)
	} else {
		if want := lab.AttachmentAlias(e.network, c.att.ContainerID, "eth0"); l.Alias != want {
			t.Errorf("%s: host veth %s alias %q, want %q", c, hv.Name, l.Alias, want)
		}
		if b, berr := e.w.Host.LinkByName("berth0"); berr != nil || l.Master != b.Index {
			t.Errorf("%s: host veth %s is not a port of berth0 (master %d, bridge %+v, %v)", c, hv.Name, l.Master, b, berr)
		}
		if hv.Mac != "" && hv.Mac != l.MAC {
			t.Errorf("%s: result MAC of %s is %s, link has %s", c, hv.Name, hv.Mac, l.MAC)
		}
	}
	got := ifaceAddrs(t, c.ns, "eth0")
	if l, lerr := c.ns.LinkByName("eth0"); lerr == nil && ct.Mac != "" && ct.Mac != l.MAC {
		t.Errorf("%s: result MAC of eth0 is %s, link has %s", c, ct.Mac, l.MAC)
	}
	for _, ip := range res.IPs {
		p, _ := netip.AddrFromSlice(ip.Address.IP)
		p = p.Unmap()
		if ip.Interface == nil || *ip.Interface != 2 {
			t.Errorf("%s: IP %s not tied to interfaces[2] (interface %v)", c, ip.Address.String(), ip.Interface)
		}
		if !hasAddr(got, p) {
			t.Errorf("%s: result IP %s not on eth0 (has %v)", c, p, got)
		}
		want := gw4
		if p.Is6() {
			want = gw6
		}
		if g, _ := netip.AddrFromSlice(ip.Gateway); g.Unmap() != want {
			t.Errorf("%s: IP %s gateway %v, want %s", c, p, ip.Gateway, want)
		}
	}
	// isDefaultGateway: a default route per family, in the result and in the container.
	defaults := map[bool]bool{}
	for _, r := range res.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			defaults[r.Dst.IP.To4() == nil] = true
		}
	}
	if !defaults[false] || !defaults[true] {
		t.Errorf("%s: result routes %v lack a default route per family", c, res.Routes)
	}
	rs, err := c.ns.Routes()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []netip.Addr{gw4, gw6} {
		found := false
		for _, r := range rs {
			if r.Dst.Bits() == 0 && r.Gw == want && r.Dev == "eth0" {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no default route via %s dev eth0 in the container; routes: %+v", c, want, rs)
		}
	}
}

// A container reaches the outside through masquerade: the outside, which
// has no route back to the container subnet, sees the host's address.
func TestBridgeMasquerade(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, 2*time.Minute)
	cs := e.addContainers(ctx, e.bridgeConf(), "c1")
	c := cs[0]

	for _, tc := range []struct {
		fam              string
		src              netip.Addr
		outside, hostSrc netip.Addr
	}{
		{"ipv4", c.v4.Addr(), lab.OutsideUplink4.Addr(), lab.HostUplink4.Addr()},
		{"ipv6", c.v6.Addr(), lab.OutsideUplink6.Addr(), lab.HostUplink6.Addr()},
	} {
		t.Run(tc.fam, func(t *testing.T) {
			ln, err := e.w.Outside.ListenTCP(netip.AddrPortFrom(tc.outside, 0))
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if _, derr := c.ns.DialTCP(dctx, ln.Addr); derr != nil {
				t.Fatalf("container %s (%s) → outside %s: %v", c, tc.src, ln.Addr, derr)
			}
			remote, err := ln.Accepted(dctx)
			if err != nil {
				t.Fatal(err)
			}
			if remote.Addr() != tc.hostSrc {
				t.Errorf("outside saw the connection from %s, want the host's address %s (container is %s)", remote.Addr(), tc.hostSrc, tc.src)
			}
			if err := c.ns.PingWithin(ctx, tc.outside, pingTimeout); err != nil {
				t.Error(err)
			}
		})
	}
}

// ADD → CHECK → DEL → DEL leaves no host veth, lease or masquerade state.
func TestBridgeLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.bridgeConf()
	c := e.addContainers(ctx, conf, "c1")[0]
	id := c.att.ContainerID

	e.wantPresent(ctx, "after ADD", id, 2)
	if err := e.r.Check(ctx, conf.List, c.att); err != nil {
		t.Errorf("CHECK after ADD: %v", err)
	}
	if err := e.r.Del(ctx, conf.List, c.att); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	e.wantGone(ctx, "after DEL", id)
	if _, err := c.ns.LinkByName("eth0"); !errors.Is(err, lab.ErrNotFound) {
		t.Errorf("after DEL: container eth0 still there (%v)", err)
	}
	if err := e.r.Del(ctx, conf.List, c.att); err != nil {
		t.Errorf("second DEL: %v", err)
	}
	e.wantGone(ctx, "after second DEL", id)

	// DEL of an attachment never added succeeds too.
	never := e.newContainer(ctx, "never")
	if err := e.r.Del(ctx, conf.List, never.att); err != nil {
		t.Errorf("DEL of a never-added container: %v", err)
	}
}

// DEL with the container's namespace already gone (a removed path, or no
// path at all) still removes the container's masquerade state and lease.
func TestBridgeDelNetnsGone(t *testing.T) {
	t.Parallel()
	base := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := base.bridgeConf()
	for _, tc := range []struct{ name, netns string }{
		{"removed path", "keep"},
		{"empty netns", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := base.in(t)
			c := e.addContainers(ctx, conf, strings.ReplaceAll(tc.name, " ", "-"))[0]
			e.wantPresent(ctx, "after ADD", c.att.ContainerID, 2)
			if err := c.ns.Delete(); err != nil {
				t.Fatal(err)
			}
			att := c.att
			if tc.netns == "" {
				att.NetNS = ""
			}
			if err := e.r.Del(ctx, conf.List, att); err != nil {
				t.Fatalf("DEL with CNI_NETNS=%q (gone): %v", att.NetNS, err)
			}
			e.wantGone(ctx, "after DEL with the netns gone", c.att.ContainerID)
			if err := e.r.Del(ctx, conf.List, att); err != nil {
				t.Errorf("second DEL: %v", err)
			}
		})
	}
}

// CHECK notices an address removed by hand and names it.
func TestBridgeCheckMissingAddress(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.bridgeConf()
	c := e.addContainers(ctx, conf, "c1")[0]
	if err := e.r.Check(ctx, conf.List, c.att); err != nil {
		t.Fatalf("CHECK before the change: %v", err)
	}
	if err := c.ns.DelAddr("eth0", c.v4); err != nil {
		t.Fatal(err)
	}
	err := e.r.Check(ctx, conf.List, c.att)
	if err == nil {
		t.Fatalf("CHECK passed after %s was removed from eth0", c.v4)
	}
	if !strings.Contains(err.Error(), c.v4.Addr().String()) {
		t.Errorf("CHECK error does not name the missing address %s: %v", c.v4.Addr(), err)
	}
	t.Logf("CHECK said: %v", err)
	if err := e.r.Del(ctx, conf.List, c.att); err != nil {
		t.Errorf("DEL after a failed CHECK: %v", err)
	}
	e.wantGone(ctx, "after DEL", c.att.ContainerID)
}

// 20 ADDs at once on a bridge that does not exist yet all succeed, with 20
// distinct addresses; 20 DELs at once leave nothing.
func TestBridgeParallelAdd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, 4*time.Minute)
	conf := e.bridgeConf()
	const n = 20
	cs := make([]*container, n)
	for i := range cs {
		cs[i] = e.newContainer(ctx, fmt.Sprintf("p%02d", i))
	}
	run := func(op string, f func(c *container) error) {
		var wg sync.WaitGroup
		errs := make([]error, n)
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = f(c)
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("%s %s: %v", op, cs[i], err)
			}
		}
	}
	run("ADD", func(c *container) error { return e.add(ctx, conf, c) })
	if t.Failed() {
		t.FailNow()
	}
	seen := map[netip.Addr]string{}
	for _, c := range cs {
		for _, p := range []netip.Prefix{c.v4, c.v6} {
			if !p.IsValid() {
				t.Errorf("%s: result lacks an address of a family: %v", c, c.res)
				continue
			}
			if other, dup := seen[p.Addr()]; dup {
				t.Errorf("%s and %s both got %s", other, c, p.Addr())
			}
			seen[p.Addr()] = c.name
			if !hasAddr(ifaceAddrs(t, c.ns, "eth0"), p.Addr()) {
				t.Errorf("%s: %s not on eth0", c, p)
			}
		}
	}
	if vs, err := e.w.Host.HostVeths(); err != nil || len(vs) != n {
		t.Errorf("%d host veths after %d ADDs (%v): %s", len(vs), n, err, e.describeVeths())
	}
	// One more container on the same bridge reaches the first and the last.
	pingAll(ctx, t, []pingPair{{cs[0], cs[n-1].v4.Addr(), cs[n-1].name}, {cs[n-1], cs[0].v6.Addr(), cs[0].name}})

	run("DEL", func(c *container) error { return e.r.Del(ctx, conf.List, c.att) })
	for _, c := range cs {
		e.wantGone(ctx, "after parallel DEL", c.att.ContainerID)
	}
	if vs, err := e.w.Host.HostVeths(); err != nil || len(vs) != 0 {
		t.Errorf("host veths left after DEL of all: %s (%v)", e.describeVeths(), err)
	}
}

// GC with two of three attachments valid removes exactly the third's host
// veth, lease and masquerade state; the other two still reach each other.
// "libcni" is GC as containerd calls it (libcni itself DELs the cached
// attachments not listed, then calls the plugins' GC); "plugin only" uses an
// empty libcni cache, so only the plugin's own GC can remove the stale one.
func TestBridgeGC(t *testing.T) {
	for _, mode := range []string{"libcni", "plugin only"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, bridgePlugins...)
			ctx := testCtx(t, 2*time.Minute)
			conf := e.bridgeConf()
			cs := e.addContainers(ctx, conf, "g1", "g2", "g3")
			for _, c := range cs {
				e.wantPresent(ctx, "after ADD", c.att.ContainerID, 2)
			}
			r := e.r
			if mode == "plugin only" {
				r = lab.NewRunner(e.w.Host, []string{bins.Dir}, t.TempDir(), lab.TestLog{TB: t})
			}
			if err := r.GC(ctx, conf.List, []lab.Attachment{cs[0].att, cs[1].att}); err != nil {
				t.Fatalf("GC: %v", err)
			}
			e.wantGone(ctx, "after GC, the stale attachment", cs[2].att.ContainerID)
			for _, c := range cs[:2] {
				e.wantPresent(ctx, "after GC, a valid attachment", c.att.ContainerID, 2)
			}
			pingAll(ctx, t, []pingPair{
				{cs[0], cs[1].v4.Addr(), cs[1].name}, {cs[1], cs[0].v4.Addr(), cs[0].name},
				{cs[0], cs[1].v6.Addr(), cs[1].name}, {cs[1], cs[0].v6.Addr(), cs[0].name},
			})
		})
	}
}

// STATUS of a working bridge network succeeds.
func TestBridgeStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, time.Minute)
	if err := e.r.Status(ctx, e.bridgeConf().List); err != nil {
		t.Errorf("STATUS: %v", err)
	}
}

// The runtime's "mac" and "ips" capability arguments (runtimeConfig) pick
// the container's MAC address and addresses.
func TestBridgeCapabilityArgs(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, time.Minute)
	conf := e.bridgeConf()
	c := e.newContainer(ctx, "caps")
	const mac = "02:42:ac:58:05:05"
	want := []netip.Prefix{netip.MustParsePrefix("10.88.5.5/16"), netip.MustParsePrefix("fd00:88::5:5/64")}
	c.att.CapabilityArgs = map[string]any{
		"mac": mac,
		"ips": []string{want[0].String(), want[1].String()},
	}
	if err := e.add(ctx, conf, c); err != nil {
		t.Fatal(err)
	}
	if c.v4 != want[0] || c.v6 != want[1] {
		t.Errorf("result addresses %s, %s; want %s, %s", c.v4, c.v6, want[0], want[1])
	}
	l, err := c.ns.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if l.MAC != mac {
		t.Errorf("eth0 MAC %s, want %s", l.MAC, mac)
	}
	have := ifaceAddrs(t, c.ns, "eth0")
	for _, p := range want {
		if !hasAddr(have, p.Addr()) {
			t.Errorf("eth0 lacks %s (has %v)", p, have)
		}
	}
	if err := e.r.Check(ctx, conf.List, c.att); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := e.r.Del(ctx, conf.List, c.att); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	e.wantGone(ctx, "after DEL", c.att.ContainerID)
}
