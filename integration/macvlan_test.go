package integration

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/link"
)

// macvlanPlugins are the binaries macvlan.conflist runs.
var macvlanPlugins = []string{"macvlan", "host-local"}

// macvlanConf loads conflist/macvlan.conflist for e's world. It names no
// master, so the master is the host's default route's interface: the
// uplink, whose far end (the world's "outside") is the LAN here. Its ranges
// move to the uplink's subnets; keys are set on the plugin as given.
func (e *env) macvlanConf(keys map[string]any) *lab.Conflist {
	e.t.Helper()
	return e.conf("macvlan.conflist", lab.ConflistOptions{Edit: func(p map[string]any) {
		p["dataDir"] = e.dataDir
		ipam := p["ipam"].(map[string]any)
		ipam["ranges"] = []any{
			[]any{map[string]any{"subnet": "203.0.113.0/24", "rangeStart": "203.0.113.100", "rangeEnd": "203.0.113.149", "gateway": lab.OutsideUplink4.Addr().String()}},
			[]any{map[string]any{"subnet": "2001:db8:1::/64", "rangeStart": "2001:db8:1::100", "rangeEnd": "2001:db8:1::149", "gateway": lab.OutsideUplink6.Addr().String()}},
		}
		for k, v := range keys {
			p[k] = v
		}
	}})
}

// macvlanGone fails t unless nothing of the container is left: no eth0
// in its namespace (when that still exists), no lease, no record, no
// per-master state.
func (e *env) macvlanGone(what string, c *container) {
	e.t.Helper()
	if c.ns.Exists() {
		if _, err := c.ns.LinkByName("eth0"); !errors.Is(err, lab.ErrNotFound) {
			e.t.Errorf("%s: %s's eth0 still there (%v)", what, c, err)
		}
	}
	leases, err := lab.LeaseFiles(e.ipamDir, e.network, c.att.ContainerID)
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range leases {
		e.t.Errorf("%s: lease %s left", what, l)
	}
	for _, dir := range []string{filepath.Join(e.dataDir, e.network), filepath.Join(e.dataDir, "_macvlan")} {
		ents, err := os.ReadDir(dir)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			e.t.Fatal(err)
		}
		for _, f := range ents {
			b, _ := os.ReadFile(filepath.Join(dir, f.Name()))
			if strings.Contains(string(b), `"`+c.att.ContainerID+`"`) {
				e.t.Errorf("%s: %s names %s: %s", what, filepath.Join(dir, f.Name()), c, b)
			}
		}
	}
}

// Two containers on the shipped conflist, with the default route's
// interface as master: the LAN (the world's outside) reaches both over
// IPv4 and IPv6 and holds their MACs; they reach each other and the LAN.
// ADD → CHECK → DEL → DEL again leaves nothing.
func TestMacvlanLifecycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, macvlanPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.macvlanConf(nil)
	cs := e.addContainers(ctx, conf, "m1", "m2")
	for _, c := range cs {
		res, err := lab.Result100(c.res)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Interfaces) != 1 || res.Interfaces[0].Sandbox != c.ns.Path {
			t.Fatalf("%s: result interfaces %v, want eth0 in its sandbox", c, res.Interfaces)
		}
		mac := res.Interfaces[0].Mac
		mv, err := c.ns.NetlinkLink("eth0")
		if err != nil {
			t.Fatal(err)
		}
		up0, err := e.w.Host.LinkByName(lab.HostUplinkName)
		if err != nil {
			t.Fatal(err)
		}
		if mv.Type() != "macvlan" || mv.Attrs().ParentIndex != up0.Index {
			t.Errorf("%s: eth0 is a %s on link %d, want a macvlan on %s (%d), the default route's", c, mv.Type(), mv.Attrs().ParentIndex, lab.HostUplinkName, up0.Index)
		}
		for _, ip := range []netip.Addr{c.v4.Addr(), c.v6.Addr()} {
			if err := e.w.Outside.PingWithin(ctx, ip, pingTimeout); err != nil {
				t.Error(err)
			}
			if got, err := e.w.Outside.NeighbourMAC(ip); err != nil || got != mac {
				t.Errorf("%s: the LAN's neighbour entry for %s is %q (%v), want %s", c, ip, got, err, mac)
			}
		}
		if err := e.r.Check(ctx, conf.List, c.att); err != nil {
			t.Errorf("CHECK %s: %v", c, err)
		}
	}
	pingAll(ctx, t, []pingPair{
		{cs[0], cs[1].v4.Addr(), cs[1].name}, {cs[1], cs[0].v6.Addr(), cs[0].name},
		{cs[0], lab.OutsideUplink4.Addr(), "LAN"}, {cs[1], lab.OutsideUplink6.Addr(), "LAN"},
	})
	for _, c := range cs {
		for i := 1; i <= 2; i++ {
			if err := e.r.Del(ctx, conf.List, c.att); err != nil {
				t.Fatalf("DEL #%d %s: %v", i, c, err)
			}
			e.macvlanGone("after DEL", c)
		}
	}
	never := e.newContainer(ctx, "never")
	if err := e.r.Del(ctx, conf.List, never.att); err != nil {
		t.Errorf("DEL of a never-added container: %v", err)
	}
}

// hostShim and promisc through the conflist: the host reaches its
// container through the shim; the uplink is promiscuous while the
// container is up; DEL removes the shim and restores the uplink.
func TestMacvlanHostShimPromisc(t *testing.T) {
	t.Parallel()
	e := newEnv(t, macvlanPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.macvlanConf(map[string]any{"hostShim": true, "promisc": true})
	c := e.addContainers(ctx, conf, "s1")[0]
	for _, ip := range []netip.Addr{c.v4.Addr(), c.v6.Addr()} {
		if err := e.w.Host.PingWithin(ctx, ip, pingTimeout); err != nil {
			t.Error(err)
		}
	}
	if on, err := e.w.Host.Promisc(lab.HostUplinkName); err != nil || !on {
		t.Errorf("uplink promiscuous = %v (%v), want true", on, err)
	}
	if err := e.r.Check(ctx, conf.List, c.att); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	if err := e.r.Del(ctx, conf.List, c.att); err != nil {
		t.Fatal(err)
	}
	e.macvlanGone("after DEL", c)
	if _, err := e.w.Host.LinkByName(link.ShimName(lab.HostUplinkName)); !errors.Is(err, lab.ErrNotFound) {
		t.Errorf("host shim still there after the last DEL (%v)", err)
	}
	if on, err := e.w.Host.Promisc(lab.HostUplinkName); err != nil || on {
		t.Errorf("uplink promiscuous = %v (%v) after the last DEL, want false", on, err)
	}
}

// GC as containerd calls it, with one of two attachments valid: the other's
// macvlan, lease and record go; the valid one still works.
func TestMacvlanGC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, macvlanPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.macvlanConf(nil)
	cs := e.addContainers(ctx, conf, "g1", "g2")
	if err := e.r.GC(ctx, conf.List, []lab.Attachment{cs[0].att}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.macvlanGone("after GC", cs[1])
	if err := e.w.Outside.PingWithin(ctx, cs[0].v4.Addr(), pingTimeout); err != nil {
		t.Error(err)
	}
	if err := e.r.Check(ctx, conf.List, cs[0].att); err != nil {
		t.Errorf("CHECK of the valid attachment: %v", err)
	}
}

func TestMacvlanStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, macvlanPlugins...)
	if err := e.r.Status(testCtx(t, time.Minute), e.macvlanConf(nil).List); err != nil {
		t.Errorf("STATUS: %v", err)
	}
}

// macvlan answers in every spec version it claims; from 0.4.0 on, CHECK
// of that result passes; DEL leaves nothing.
func TestMacvlanResultVersions(t *testing.T) {
	t.Parallel()
	base := newEnv(t, macvlanPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			e := base.in(t)
			conf := e.macvlanConf(nil)
			conf, err := lab.EditConflist(conf.Bytes, lab.ConflistOptions{CNIVersion: v})
			if err != nil {
				t.Fatal(err)
			}
			c := e.newContainer(ctx, "v"+v)
			if err := e.add(ctx, conf, c); err != nil {
				t.Fatal(err)
			}
			if got := c.res.Version(); got != v {
				t.Errorf("result version %s, want %s", got, v)
			}
			if !c.v4.IsValid() || !c.v6.IsValid() {
				t.Errorf("result %v lacks an address of a family", c.res)
			}
			if v != "0.3.0" && v != "0.3.1" {
				if err := e.r.Check(ctx, conf.List, c.att); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if err := e.r.Del(ctx, conf.List, c.att); err != nil {
				t.Fatal(err)
			}
			e.macvlanGone("after DEL", c)
		})
	}
}
