package integration

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/hostport/portplan"
	"github.com/berth-cni/berth/pkg/owner"
)

// portmapIPTConf is conflist/bridge-portmap.conflist with portmap on the
// iptables backend; edit, when set, changes the portmap plugin further.
func (e *env) portmapIPTConf(edit func(p map[string]any)) *lab.Conflist {
	e.t.Helper()
	if !hostport.BackendAvailable(config.BackendIPTables) {
		const why = "iptables-restore and iptables-save (both families) are not installed: the iptables backend cannot run here"
		if os.Getenv("CI") != "" {
			e.t.Fatal(why + " (CI is set, so a skip would hide the test)")
		}
		e.t.Skip(why)
	}
	return e.conf("bridge-portmap.conflist", lab.ConflistOptions{Edit: func(p map[string]any) {
		if p["type"] != "portmap" {
			return
		}
		p["backend"] = "iptables"
		if edit != nil {
			edit(p)
		}
	}})
}

// iptDump is the host's iptables-save and ip6tables-save output.
func (e *env) iptDump(ctx context.Context) string {
	e.t.Helper()
	var b strings.Builder
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		out, err := e.w.Host.Output(ctx, tool, "-t", "nat")
		if err != nil {
			e.t.Fatal(err)
		}
		b.Write(out)
	}
	return b.String()
}

// hostRestore feeds payload to iptables-restore --noflush (ip6tables-
// when v6) in the host namespace.
func (e *env) hostRestore(ctx context.Context, v6 bool, payload string) {
	e.t.Helper()
	tool := "iptables-restore"
	if v6 {
		tool = "ip6tables-restore"
	}
	cmd := exec.CommandContext(ctx, tool, "--noflush", "-w")
	cmd.Stdin = strings.NewReader(payload)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := e.w.Host.Run(cmd); err != nil {
		e.t.Fatalf("%s: %v: %s", tool, err, stderr.String())
	}
}

// iptPublish adds a container named name publishing tcp port → 80 on
// conf, with a listener on 80, and a neighbour on the same bridge (added
// first, with no mapping). Close the listener when done.
func (e *env) iptPublish(ctx context.Context, conf *lab.Conflist, name string, port int) (c, n *container, ln *lab.Listener) {
	e.t.Helper()
	n = e.addContainers(ctx, conf, name+"n")[0]
	c = e.newContainer(ctx, name).publish(pm("tcp", port, 80, ""))
	if err := e.add(ctx, conf, c); err != nil {
		e.t.Fatal(err)
	}
	ln, err := c.ns.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), 80))
	if err != nil {
		e.t.Fatal(err)
	}
	return c, n, ln
}

// iptRelease runs CHECK on c with conf, then DEL twice with a minimal
// portmap config (DEL must work from what the plugin recorded), DEL of n,
// and wants nothing of either left.
func (e *env) iptRelease(ctx context.Context, conf *lab.Conflist, c, n *container) {
	e.t.Helper()
	if err := e.r.Check(ctx, conf.List, c.att); err != nil {
		e.t.Errorf("CHECK %s: %v", c, err)
	}
	minimal := e.portmapIPTConf(nil)
	for i, x := range []*container{c, c, n} {
		if err := e.r.Del(ctx, minimal.List, x.att); err != nil {
			e.t.Fatalf("DEL %s (#%d): %v", x, i+1, err)
		}
		e.wantGone(ctx, fmt.Sprintf("after DEL %s (#%d)", x, i+1), x.att.ContainerID)
	}
	o := owner.Owner{Network: e.network, ContainerID: c.att.ContainerID, IfName: c.att.IfName}
	if dump := e.iptDump(ctx); strings.Contains(dump, portplan.IPTChain(o)) {
		e.t.Errorf("after DEL, the chain of %s is left:\n%s", c, dump)
	}
}

// wantLines fails t unless dump holds each of want and none of not.
func wantLines(t *testing.T, dump string, want, not []string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(dump, w) {
			t.Errorf("iptables-save lacks %q:\n%s", w, dump)
		}
	}
	for _, w := range not {
		if strings.Contains(dump, w) {
			t.Errorf("iptables-save has %q:\n%s", w, dump)
		}
	}
}

// On the iptables backend a published port is reached as on nftables:
// from another host (with the client's address), from the host by its
// address and by 127.0.0.1, and by hairpin from the same bridge
// (masqueraded to the gateway), on IPv4 and IPv6. The rules are in
// iptables, none in berth's nftables table; ADD → CHECK → DEL → DEL
// leaves no rule naming the container, and the port answers no more.
func TestPortmapIPTablesReach(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapIPTConf(nil)
	c1, c2, ln := e.iptPublish(ctx, conf, "c1", 8080)
	defer ln.Close()
	wantLines(t, e.iptDump(ctx), []string{
		"berth id=" + c1.att.ContainerID,
		"-j DNAT --to-destination " + c1.v4.Addr().String() + ":80",
		"-j DNAT --to-destination [" + c1.v6.Addr().String() + "]:80",
	}, nil)
	if nft := e.nftDump(ctx); strings.Contains(nft, c1.v4.Addr().String()+" . 80") {
		t.Errorf("the iptables backend wrote berth's nftables map:\n%s", portmapLines(nft))
	}

	h4, h6 := lab.HostUplink4.Addr(), lab.HostUplink6.Addr()
	o4, o6 := lab.OutsideUplink4.Addr(), lab.OutsideUplink6.Addr()
	dialWant(ctx, t, "outside v4", e.w.Outside, netip.AddrPortFrom(h4, 8080), o4)
	dialWant(ctx, t, "outside v6", e.w.Outside, netip.AddrPortFrom(h6, 8080), o6)
	dialWant(ctx, t, "host v4", e.w.Host, netip.AddrPortFrom(h4, 8080), netip.Addr{})
	dialWant(ctx, t, "host v6", e.w.Host, netip.AddrPortFrom(h6, 8080), netip.Addr{})
	dialWant(ctx, t, "host 127.0.0.1", e.w.Host, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 8080), gw4)
	dialWant(ctx, t, "hairpin v4 (neighbour)", c2.ns, netip.AddrPortFrom(h4, 8080), gw4)
	dialWant(ctx, t, "hairpin v6 (neighbour)", c2.ns, netip.AddrPortFrom(h6, 8080), gw6)
	dialWant(ctx, t, "hairpin v4 (itself)", c1.ns, netip.AddrPortFrom(h4, 8080), gw4)

	e.iptRelease(ctx, conf, c1, c2)
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if line, err := e.w.Outside.DialTCP(dctx, netip.AddrPortFrom(h4, 8080)); err == nil {
		t.Errorf("after DEL, host port 8080 still answers: %q", line)
	}
}

// One owner per host port whatever the backend: a second claim on
// iptables, or on nftables, of a port held through iptables fails with
// code 101 naming the holder and changes no rule; DEL frees the port.
func TestPortmapIPTablesOneOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	ipt := e.portmapIPTConf(nil)
	holder := e.newContainer(ctx, "holder").publish(pm("tcp", 8080, 80, ""))
	if err := e.add(ctx, ipt, holder); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		conf *lab.Conflist
	}{{"iptables", ipt}, {"nftables", e.portmapConf()}} {
		c := e.newContainer(ctx, "x"+tc.name).publish(pm("tcp", 8080, 81, ""))
		before := e.nftDump(ctx)
		err := e.add(ctx, tc.conf, c)
		if code := cniCode(err); code != 101 || !strings.Contains(fmt.Sprint(err), holder.att.ContainerID) {
			t.Errorf("%s: second claim of tcp 8080: code %d, %v; want 101 naming %s", tc.name, code, err, holder.att.ContainerID)
		}
		if after := e.nftDump(ctx); portmapLines(after) != portmapLines(before) {
			t.Errorf("%s: the refused ADD changed the rules:\nbefore:\n%s\nafter:\n%s", tc.name, portmapLines(before), portmapLines(after))
		}
		if err := e.r.Del(ctx, tc.conf.List, c.att); err != nil {
			t.Errorf("%s: DEL of the refused container: %v", tc.name, err)
		}
	}
	if err := e.r.Del(ctx, ipt.List, holder.att); err != nil {
		t.Fatal(err)
	}
	next := e.newContainer(ctx, "next").publish(pm("tcp", 8080, 80, ""))
	if err := e.add(ctx, ipt, next); err != nil {
		t.Errorf("after the holder's DEL: %v", err)
	}
}

// The config's iptables options, with traffic: markMasqBit masquerades
// hairpin traffic by another mark; externalSetMarkChain hands the marking
// to a chain kube-proxy would own (made here by hand, with its
// masquerade), and berth adds no masquerade of its own; conditionsV4
// keep the outside host from reaching the port on IPv4, not on IPv6 nor
// from the host.
func TestPortmapIPTablesOptions(t *testing.T) {
	t.Parallel()
	base := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 3*time.Minute)
	h4, h6 := lab.HostUplink4.Addr(), lab.HostUplink6.Addr()

	t.Run("markMasqBit", func(t *testing.T) {
		e := base.in(t)
		conf := e.portmapIPTConf(func(p map[string]any) { p["markMasqBit"] = 5 })
		c, n, ln := e.iptPublish(ctx, conf, "mark", 8181)
		defer ln.Close()
		wantLines(t, e.iptDump(ctx), []string{"--dport 8181 -j MARK --set-xmark 0x20/0x20", "-A BERTH-HP-MASQ -m mark --mark 0x20/0x20"}, nil)
		dialWant(ctx, t, "hairpin v4", n.ns, netip.AddrPortFrom(h4, 8181), gw4)
		dialWant(ctx, t, "hairpin v6", n.ns, netip.AddrPortFrom(h6, 8181), gw6)
		dialWant(ctx, t, "host 127.0.0.1", e.w.Host, netip.MustParseAddrPort("127.0.0.1:8181"), gw4)
		e.iptRelease(ctx, conf, c, n)
	})

	t.Run("externalSetMarkChain", func(t *testing.T) {
		e := base.in(t)
		// What kube-proxy keeps: a chain that marks, and a masquerade
		// of marked packets in POSTROUTING.
		kube := "*nat\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n" +
			"-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n" +
			"-A KUBE-POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE\n" +
			"-I POSTROUTING -j KUBE-POSTROUTING\nCOMMIT\n"
		e.hostRestore(ctx, false, kube)
		e.hostRestore(ctx, true, kube)
		conf := e.portmapIPTConf(func(p map[string]any) { p["externalSetMarkChain"] = "KUBE-MARK-MASQ" })
		c, n, ln := e.iptPublish(ctx, conf, "kube", 8282)
		defer ln.Close()
		wantLines(t, e.iptDump(ctx), []string{"--dport 8282 -j KUBE-MARK-MASQ"},
			[]string{"--dport 8282 -j MARK", "-A BERTH-HP-MASQ -m mark --mark 0x2000"})
		dialWant(ctx, t, "hairpin v4", n.ns, netip.AddrPortFrom(h4, 8282), gw4)
		dialWant(ctx, t, "hairpin v6", n.ns, netip.AddrPortFrom(h6, 8282), gw6)
		e.iptRelease(ctx, conf, c, n)
	})

	t.Run("conditions", func(t *testing.T) {
		e := base.in(t)
		conf := e.portmapIPTConf(func(p map[string]any) {
			p["conditionsV4"] = []string{"!", "-s", lab.OutsideUplink4.Addr().String()}
		})
		c, n, ln := e.iptPublish(ctx, conf, "cond", 8383)
		defer ln.Close()
		dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		if line, err := e.w.Outside.DialTCP(dctx, netip.AddrPortFrom(h4, 8383)); err == nil {
			t.Errorf("outside v4, excluded by conditionsV4, reached the container: %q", line)
		}
		dialWant(ctx, t, "outside v6", e.w.Outside, netip.AddrPortFrom(h6, 8383), lab.OutsideUplink6.Addr())
		dialWant(ctx, t, "host v4", e.w.Host, netip.AddrPortFrom(h4, 8383), netip.Addr{})
		e.iptRelease(ctx, conf, c, n)
	})
}

// A plugin killed mid-ADD on the iptables backend leaves state that DEL
// removes entirely, and the port is free for the next container.
func TestPortmapIPTablesKilledMidAdd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapIPTConf(nil)
	for i, point := range []string{"after-claim", "after-datapath"} {
		c := e.newContainer(ctx, fmt.Sprintf("k%d", i)).publish(pm("tcp", 5151, 80, ""))
		c.att.Args = [][2]string{{"IgnoreUnknown", "1"}, {"BERTH_TEST_KILL", point}}
		if err := e.add(ctx, conf, c); err == nil {
			t.Fatalf("%s: ADD of a plugin killed %s succeeded", c, point)
		}
		c.att.Args = nil
		if err := e.r.Del(ctx, conf.List, c.att); err != nil {
			t.Fatalf("%s: DEL after a kill %s: %v", c, point, err)
		}
		e.wantGone(ctx, "DEL after a kill "+point, c.att.ContainerID)
		n := e.newContainer(ctx, fmt.Sprintf("n%d", i)).publish(pm("tcp", 5151, 80, ""))
		if err := e.add(ctx, conf, n); err != nil {
			t.Errorf("claim after DEL of a container killed %s: %v", point, err)
		}
		if err := e.r.Del(ctx, conf.List, n.att); err != nil {
			t.Fatal(err)
		}
	}
}
