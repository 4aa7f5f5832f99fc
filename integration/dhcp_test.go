package integration

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"

	"github.com/berth-cni/berth/internal/lab"
	berthstate "github.com/berth-cni/berth/pkg/state"
)

// The DHCP network: the bridge carries the server's address, which is
// also the router it hands out; leases come from a pool of eight.
const dhcpBridge = "bdhcp0"

var (
	dhcpServerAddr = netip.MustParsePrefix("10.99.0.1/24")
	dhcpPool       = netip.MustParsePrefix("10.99.0.16/29")
)

// dhcpEnv is an env whose host has a bridge with a DHCP server on it and
// the dhcp plugin's daemon running.
type dhcpEnv struct {
	*env
	server *lab.DHCPServer
	daemon *lab.DHCPDaemon
	conf   *lab.Conflist
}

func newDHCPEnv(t *testing.T, ctx context.Context) *dhcpEnv {
	t.Helper()
	e := newEnv(t, "bridge", "dhcp")
	// The bridge exists before the first ADD (the server listens on it);
	// berth's bridge plugin attaches the containers to it.
	if err := e.w.Host.AddBridge(dhcpBridge); err != nil {
		t.Fatal(err)
	}
	if err := e.w.Host.PinMAC(dhcpBridge); err != nil {
		t.Fatal(err)
	}
	if err := e.w.Host.AddAddr(dhcpBridge, dhcpServerAddr); err != nil {
		t.Fatal(err)
	}
	srv, err := lab.StartDHCPServer(e.w.Host, lab.DHCPServerOptions{
		Iface:       dhcpBridge,
		Server:      dhcpServerAddr,
		Pool:        dhcpPool,
		LeaseTime:   time.Minute,
		RenewalTime: time.Second, // so the test sees the daemon renew
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cerr := srv.Close(); cerr != nil {
			t.Errorf("stop dhcp server: %v", cerr)
		}
	})
	d, err := lab.StartDHCPDaemon(ctx, e.w.Host, lab.DHCPDaemonOptions{
		Binary: filepath.Join(bins.Dir, "dhcp"),
		Dir:    t.TempDir(),
		// A lost packet costs 1 s, not the default 10; an ADD with no
		// server gives up after 5 s rather than 208.
		Args: []string{"-timeout", "1s", "-resendtimeout", "5s"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if serr := d.Stop(); serr != nil {
			t.Errorf("%v", serr)
		}
		t.Logf("dhcp daemon log:\n%s", d.Log())
	})
	return &dhcpEnv{env: e, server: srv, daemon: d, conf: e.dhcpConf(d.Socket)}
}

// dhcpConf is a bridge network that takes its addresses from the dhcp
// plugin: berth puts no gateway address on the bridge and masquerades
// nothing; the DHCP server hands out the addresses and the router.
func (e *env) dhcpConf(socket string) *lab.Conflist {
	e.t.Helper()
	b, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0",
		"name":       e.network,
		"plugins": []any{map[string]any{
			"type":      "bridge",
			"bridge":    dhcpBridge,
			"isGateway": false,
			"ipMasq":    false,
			"dataDir":   e.dataDir,
			"ipam":      map[string]any{"type": "dhcp", "daemonSocketPath": socket},
		}},
	})
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := lab.EditConflist(b, lab.ConflistOptions{})
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// clientID is the DHCP client identifier the dhcp plugin's daemon uses
// for an attachment.
func (e *dhcpEnv) clientID(c *container) string {
	return c.att.ContainerID + "/" + e.network + "/" + c.att.IfName
}

// count returns how many messages of type typ the server got from c.
func (e *dhcpEnv) count(c *container, typ dhcpv4.MessageType) int {
	n := 0
	for _, m := range e.server.Messages() {
		if m.Type == typ && m.ClientID == e.clientID(c) {
			n++
		}
	}
	return n
}

// Two containers on a bridge get their addresses from a DHCP server on it
// through the dhcp IPAM plugin and its daemon: each address is from the
// pool, in the result and on eth0, with the server's router as default
// gateway; they reach each other and the router; CHECK passes without a
// new lease; the daemon renews; DEL drops the lease and leaves nothing of
// berth's; DEL again succeeds.
func TestDHCPBridge(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	e := newDHCPEnv(t, ctx)
	router := dhcpServerAddr.Addr()

	cs := make([]*container, 2)
	for i, name := range []string{"d1", "d2"} {
		cs[i] = e.newContainer(ctx, name)
		e.mustAdd(ctx, cs[i])
	}
	d1, d2 := cs[0], cs[1]
	leases := e.server.Leases()
	for _, c := range cs {
		checkDHCPResult(t, c, router)
		if got := leases[e.clientID(c)]; got != c.v4.Addr() {
			t.Errorf("%s: the server's lease for %q is %v, the result says %s; leases: %v", c, e.clientID(c), got, c.v4, leases)
		}
	}
	if d1.v4.Addr() == d2.v4.Addr() {
		t.Fatalf("both containers got %s", d1.v4)
	}
	pingAll(ctx, t, []pingPair{
		{d1, d2.v4.Addr(), d2.name}, {d2, d1.v4.Addr(), d1.name},
		{d1, router, "router"}, {d2, router, "router"},
	})

	// CHECK asks the daemon for the lease again (the dhcp plugin's CHECK
	// is DHCP.Allocate): it must answer from the lease it holds.
	discovers := e.count(d1, dhcpv4.MessageTypeDiscover)
	for _, c := range cs {
		if err := e.r.Check(ctx, e.conf.List, c.att); err != nil {
			t.Errorf("CHECK %s: %v", c, err)
		}
	}
	if n := e.count(d1, dhcpv4.MessageTypeDiscover); n != discovers {
		t.Errorf("CHECK made the daemon acquire a new lease: %d DISCOVERs from %s, %d before", n, d1, discovers)
	}

	// The daemon keeps the lease: with T1 = 1 s it renews from inside the
	// container (a REQUEST carrying the leased address as ciaddr).
	if m, err := e.waitMessage(ctx, d1, dhcpv4.MessageTypeRequest, d1.v4.Addr()); err != nil {
		t.Errorf("no renewal from %s: %v", d1, err)
	} else {
		t.Logf("renewal: %s", m)
	}

	// DEL. berth runs the dhcp plugin's DEL before it removes the veth, so
	// the daemon's RELEASE, sent through the container's eth0, reaches the
	// server, which frees the address (upstream bridge removes the link
	// first and loses it: containernetworking/plugins#791). The daemon
	// drops the lease too, which shows when the same attachment is added
	// again: it acquires afresh (a DISCOVER) instead of answering from a
	// lease it still holds.
	if err := e.r.Del(ctx, e.conf.List, d1.att); err != nil {
		t.Fatalf("DEL %s: %v", d1, err)
	}
	if _, err := e.waitMessage(ctx, d1, dhcpv4.MessageTypeRelease, d1.v4.Addr()); err != nil {
		t.Errorf("no RELEASE from %s on DEL: %v", d1, err)
	}
	if a, ok := e.server.Leases()[e.clientID(d1)]; ok {
		t.Errorf("the server still binds %s to %s after DEL", a, d1)
	}
	discovers = e.count(d1, dhcpv4.MessageTypeDiscover)
	e.mustAdd(ctx, d1)
	if n := e.count(d1, dhcpv4.MessageTypeDiscover); n == discovers {
		t.Errorf("ADD after DEL of %s sent no DISCOVER: the daemon still held the lease", d1)
	}
	for _, what := range []string{"DEL", "second DEL"} {
		if err := e.r.Del(ctx, e.conf.List, d1.att); err != nil {
			t.Errorf("%s %s: %v", what, d1, err)
		}
		e.wantNothingLeft(ctx, "after "+what, d1)
	}
	// The other container is untouched.
	if err := d2.ns.PingWithin(ctx, router, pingTimeout); err != nil {
		t.Errorf("%s → router after DEL of %s: %v", d2, d1, err)
	}

	// A runtime (or berth's own undo) may have run the IPAM DEL already:
	// the dhcp plugin's DEL alone releases, and berth's DEL after it
	// still succeeds and leaves nothing.
	if err := e.ipamDel(ctx, d2); err != nil {
		t.Fatalf("dhcp plugin DEL of %s: %v", d2, err)
	}
	if _, err := e.waitMessage(ctx, d2, dhcpv4.MessageTypeRelease, d2.v4.Addr()); err != nil {
		t.Errorf("no RELEASE from %s with eth0 in place: %v", d2, err)
	}
	if a, ok := e.server.Leases()[e.clientID(d2)]; ok {
		t.Errorf("the server still binds %s to %s after its RELEASE", a, d2)
	}
	if err := e.r.Del(ctx, e.conf.List, d2.att); err != nil {
		t.Errorf("DEL %s after its lease was released: %v", d2, err)
	}
	e.wantNothingLeft(ctx, "after DEL", d2)
}

// STATUS with the daemon down: berth's bridge asks the IPAM plugin, and
// upstream's dhcp plugin has no STATUS (skel answers success for it), so
// STATUS passes though no ADD can. This pins that: when upstream's dhcp
// plugin learns STATUS, expect code 50 naming the daemon's socket here.
// The ADD itself fails naming the daemon's socket, and leaves nothing.
func TestDHCPDaemonDown(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t, time.Minute)
	e := newDHCPEnv(t, ctx)
	if err := e.r.Status(ctx, e.conf.List); err != nil {
		t.Errorf("STATUS with the daemon running: %v", err)
	}
	if err := e.daemon.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Status(ctx, e.conf.List); err != nil {
		t.Errorf("STATUS with the daemon stopped: %v; upstream's dhcp plugin had no STATUS (skel answered success): if it reports now, want code 50 naming %s", err, e.daemon.Socket)
	}

	c := e.newContainer(ctx, "nod")
	err := e.add(ctx, e.conf, c)
	if err == nil {
		t.Fatalf("ADD with the daemon stopped succeeded: %v", c.res)
	}
	if !strings.Contains(err.Error(), "dialing DHCP daemon") || !strings.Contains(err.Error(), e.daemon.Socket) {
		t.Errorf("ADD with the daemon stopped: the error does not name the daemon's socket %s: %v", e.daemon.Socket, err)
	}
	t.Logf("ADD with the daemon stopped: %v", err)
	e.wantNothingLeft(ctx, "after the failed ADD", c)
	// A runtime sends DEL after a failed ADD; the dhcp plugin's DEL needs
	// the daemon too.
	t.Logf("DEL with the daemon stopped: %v", e.r.Del(ctx, e.conf.List, c.att))
}

// mustAdd runs ADD for c, failing t (with the daemon's log) on error.
func (e *dhcpEnv) mustAdd(ctx context.Context, c *container) {
	e.t.Helper()
	start := time.Now()
	if err := e.add(ctx, e.conf, c); err != nil {
		e.t.Fatalf("%v\ndhcp daemon log:\n%s", err, e.daemon.Log())
	}
	e.t.Logf("ADD %s: %s in %v", c, c.v4, time.Since(start).Round(time.Millisecond))
}

// waitMessage waits up to 5 s for a message of type typ from c's client
// with ciaddr.
func (e *dhcpEnv) waitMessage(ctx context.Context, c *container, typ dhcpv4.MessageType, ciaddr netip.Addr) (lab.DHCPMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	m, err := e.server.WaitMessage(ctx, func(m lab.DHCPMessage) bool {
		return m.Type == typ && m.ClientID == e.clientID(c) && m.CIAddr == ciaddr
	})
	if err != nil {
		return m, fmt.Errorf("%s with ciaddr %s: %w; messages: %v", typ, ciaddr, err, e.server.Messages())
	}
	return m, nil
}

// ipamDel runs the dhcp plugin's DEL for c as berth's bridge delegates it,
// from a runner with its own libcni cache (so the bridge's cached
// attachment stays).
func (e *dhcpEnv) ipamDel(ctx context.Context, c *container) error {
	b, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0",
		"name":       e.network,
		"plugins": []any{map[string]any{
			"type": "dhcp",
			"ipam": map[string]any{"type": "dhcp", "daemonSocketPath": e.daemon.Socket},
		}},
	})
	if err != nil {
		return err
	}
	conf, err := lab.EditConflist(b, lab.ConflistOptions{})
	if err != nil {
		return err
	}
	r := lab.NewRunner(e.w.Host, e.r.BinDirs, e.t.TempDir(), lab.TestLog{TB: e.t})
	return r.Del(ctx, conf.List, c.att)
}

// wantNothingLeft fails t unless c has no host veth, netfilter state or
// attachment record, and no eth0.
func (e *dhcpEnv) wantNothingLeft(ctx context.Context, what string, c *container) {
	e.t.Helper()
	e.wantGone(ctx, what, c.att.ContainerID)
	if _, found, err := berthstate.Open(e.dataDir, e.network).Get(c.att.ContainerID, c.att.IfName); err != nil || found {
		e.t.Errorf("%s: attachment record of %s still there (%v)", what, c, err)
	}
	if _, err := c.ns.LinkByName(c.att.IfName); !errors.Is(err, lab.ErrNotFound) {
		e.t.Errorf("%s: %s still has %s (%v)", what, c, c.att.IfName, err)
	}
}

// checkDHCPResult checks c's result and eth0: one IPv4 address from the
// pool with the server's subnet length and the router as gateway, a
// default route via the router, and the address on eth0.
func checkDHCPResult(t *testing.T, c *container, router netip.Addr) {
	t.Helper()
	res, err := lab.Result100(c.res)
	if err != nil {
		t.Fatalf("%s: %v", c, err)
	}
	if len(res.IPs) != 1 || !c.v4.IsValid() || c.v6.IsValid() {
		t.Fatalf("%s: result IPs %v, want one IPv4 address", c, res.IPs)
	}
	if !dhcpPool.Contains(c.v4.Addr()) || c.v4.Bits() != dhcpServerAddr.Bits() {
		t.Errorf("%s: address %s, want one from %s with length /%d", c, c.v4, dhcpPool, dhcpServerAddr.Bits())
	}
	if gw, _ := netip.AddrFromSlice(res.IPs[0].Gateway.To4()); gw != router {
		t.Errorf("%s: gateway %v, want the router %s", c, res.IPs[0].Gateway, router)
	}
	if have := ifaceAddrs(t, c.ns, "eth0"); !hasAddr(have, c.v4.Addr()) {
		t.Errorf("%s: %s not on eth0 (has %v)", c, c.v4, have)
	}
	rs, err := c.ns.Routes()
	if err != nil {
		t.Fatal(err)
	}
	var routes []string
	found := false
	for _, r := range rs {
		routes = append(routes, fmt.Sprintf("%s via %s dev %s", r.Dst, r.Gw, r.Dev))
		found = found || (r.Dst.Bits() == 0 && r.Gw == router && r.Dev == "eth0")
	}
	if !found {
		t.Errorf("%s: no default route via %s dev eth0; routes: %s", c, router, strings.Join(routes, "; "))
	}
}
