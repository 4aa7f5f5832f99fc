package integration

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/overlay"
	"github.com/berth-cni/berth/pkg/owner"
)

// overlayPlugins are the binaries the overlay tests run.
var overlayPlugins = []string{"overlay", "host-local", "portmap", "berth-overlayd"}

// The overlay network of every test: the cluster network, its VNI, and a
// lease TTL short enough that a stopped host goes within a test.
const (
	ovCIDR     = "10.244.0.0/16"
	ovVNI      = 4242
	ovLeaseTTL = 3 * time.Second
)

// ovCluster is a multi-host lab: hosts on an underlay, one agent each,
// sharing one store.
type ovCluster struct {
	t       *testing.T
	u       *lab.Underlay
	dir     string
	network string
	// storeFlags are the agents' store flags (-store file -store-dir …,
	// or -store etcd -etcd-endpoints …).
	storeFlags []string
	// leaseTTL is the agents' -lease-ttl: ovLeaseTTL unless set.
	leaseTTL time.Duration

	mu    sync.Mutex
	hosts map[int]*ovHost
}

// ovHost is one host: its namespace, its own state and data directories
// (so the hosts of one machine share nothing but the store), its agent
// and a libcni runner in its namespace.
type ovHost struct {
	c        *ovCluster
	i        int
	ns       *lab.NS
	stateDir string
	dataDir  string
	r        *lab.Runner
	conf     *lab.Conflist
	agent    *lab.Agent
	flags    []string // more agent flags
}

func newOvCluster(t *testing.T, storeFlags []string) *ovCluster {
	t.Helper()
	lab.RequireRoot(t)
	needBins(t, overlayPlugins...)
	ctx := testCtx(t, time.Minute)
	u, err := lab.NewUnderlay(ctx, "bovi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Error(err)
		}
	})
	return &ovCluster{t: t, u: u, dir: t.TempDir(), network: "ov-" + u.ID, storeFlags: storeFlags, hosts: map[int]*ovHost{}}
}

// fileStore is the agents' store flags for a file store under dir.
func fileStore(dir string) []string { return []string{"-store", "file", "-store-dir", dir} }

// addHost creates host i, starts its agent and waits until it is ready.
func (c *ovCluster) addHost(ctx context.Context, i int) *ovHost {
	c.t.Helper()
	h := c.newHost(ctx, i)
	h.startAgent(ctx)
	h.waitReady(ctx)
	return h
}

// newHost creates host i, without an agent.
func (c *ovCluster) newHost(ctx context.Context, i int) *ovHost {
	c.t.Helper()
	ns, err := c.u.AddHost(ctx, i)
	if err != nil {
		c.t.Fatal(err)
	}
	dir := filepath.Join(c.dir, fmt.Sprintf("h%d", i))
	h := &ovHost{c: c, i: i, ns: ns, stateDir: filepath.Join(dir, "state"), dataDir: filepath.Join(dir, "data")}
	h.r = lab.NewRunner(ns, []string{bins.Dir}, filepath.Join(dir, "cache"), lab.TestLog{TB: c.t})
	h.conf, err = lab.LoadConflist(filepath.Join(repoRoot, "conflist", "overlay.conflist"), lab.ConflistOptions{
		Name:       c.network,
		DataDir:    h.dataDir,
		PortmapDir: filepath.Join(dir, "ports"),
		Edit: func(p map[string]any) {
			if p["type"] == "overlay" {
				p["stateDir"] = h.stateDir
			}
		},
	})
	if err != nil {
		c.t.Fatal(err)
	}
	c.mu.Lock()
	c.hosts[i] = h
	c.mu.Unlock()
	return h
}

// startAgent starts berth-overlayd in the host's namespace.
func (h *ovHost) startAgent(ctx context.Context) {
	h.c.t.Helper()
	ttl := h.c.leaseTTL
	if ttl == 0 {
		ttl = ovLeaseTTL
	}
	args := append([]string{
		"-cidr", ovCIDR, "-subnet-len", "24", "-vni", fmt.Sprint(ovVNI),
		"-node", fmt.Sprintf("h%d", h.i), "-lease-ttl", ttl.String(), "-listen", "127.0.0.1:9614",
	}, h.c.storeFlags...)
	args = append(args, h.flags...)
	a, err := lab.StartAgent(h.ns, filepath.Join(bins.Dir, "berth-overlayd"), h.c.network, h.stateDir, args, lab.TestLog{TB: h.c.t})
	if err != nil {
		h.c.t.Fatal(err)
	}
	h.agent = a
	h.c.t.Cleanup(func() { a.Stop(syscall.SIGKILL) })
}

// waitReady waits until the agent's state file says ready.
func (h *ovHost) waitReady(ctx context.Context) overlay.Local {
	h.c.t.Helper()
	l, err := h.agent.WaitReady(ctx)
	if err != nil {
		h.c.t.Fatal(err)
	}
	return l
}

// ovContainer is a container on an overlay host.
type ovContainer struct {
	*container
	host *ovHost
}

// newContainer creates container name's namespace.
func (h *ovHost) newContainer(ctx context.Context, name string) *container {
	h.c.t.Helper()
	ns, err := h.c.u.AddNS(ctx, name)
	if err != nil {
		h.c.t.Fatal(err)
	}
	return &container{name: name, ns: ns, att: lab.Attachment{ContainerID: name + "-" + h.c.u.ID, NetNS: ns.Path, IfName: "eth0"}}
}

// addContainer creates container name on h and ADDs it.
func (h *ovHost) addContainer(ctx context.Context, name string) *ovContainer {
	h.c.t.Helper()
	c := h.newContainer(ctx, name)
	res, err := h.r.Add(ctx, h.conf.List, c.att)
	if err != nil {
		h.c.t.Fatalf("ADD %s on h%d: %v", name, h.i, err)
	}
	c.res = res
	addrs, err := lab.ResultAddrs(res)
	if err != nil {
		h.c.t.Fatal(err)
	}
	c.v4, _ = lab.Pick(addrs, 4)
	if !c.v4.IsValid() {
		h.c.t.Fatalf("ADD %s on h%d: no IPv4 address in %v", name, h.i, res)
	}
	return &ovContainer{container: c, host: h}
}

// pingMesh pings every container from every other, at once.
func pingMesh(ctx context.Context, t *testing.T, cs []*ovContainer) {
	t.Helper()
	var pairs []pingPair
	for _, a := range cs {
		for _, b := range cs {
			if a != b {
				pairs = append(pairs, pingPair{from: a.container, to: b.v4.Addr()})
			}
		}
	}
	pingAll(ctx, t, pairs)
}

// peerState counts the kernel state the agent programmed on h for the
// remote hosts: routes via the VXLAN device, its permanent neighbours and
// its FDB entries, rendered as `ip` would.
//
// Equivalent: ip -n $h route show dev $vx; ip -n $h neigh show dev $vx nud permanent; bridge -n $h fdb show dev $vx
func (h *ovHost) peerState(ctx context.Context, dev string) (routes, neighs, fdb []string) {
	h.c.t.Helper()
	lines := func(args ...string) []string {
		out, err := h.ns.Output(ctx, args[0], args[1:]...)
		if err != nil {
			h.c.t.Fatal(err)
		}
		var ls []string
		for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			if l != "" {
				ls = append(ls, l)
			}
		}
		return ls
	}
	for _, r := range lines("ip", "-4", "route", "show", "dev", dev) {
		if strings.Contains(r, " via ") {
			routes = append(routes, r)
		}
	}
	neighs = lines("ip", "-4", "neigh", "show", "dev", dev, "nud", "permanent")
	for _, f := range lines("bridge", "fdb", "show", "dev", dev) {
		if strings.Contains(f, " dst ") {
			fdb = append(fdb, f)
		}
	}
	return routes, neighs, fdb
}

// wantPeers waits until every host's VXLAN device has exactly one route,
// one permanent neighbour and one FDB entry per other host in want.
func (c *ovCluster) wantPeers(ctx context.Context, want ...*ovHost) {
	c.t.Helper()
	var last string
	for ctx.Err() == nil {
		last = ""
		for _, h := range want {
			l, err := overlay.ReadLocal(h.stateDir, c.network)
			if err != nil {
				c.t.Fatal(err)
			}
			routes, neighs, fdb := h.peerState(ctx, l.Device)
			if len(routes) != len(want)-1 || len(neighs) != len(want)-1 || len(fdb) != len(want)-1 {
				last += fmt.Sprintf("h%d (%s): %d routes %q, %d neighbours %q, %d fdb %q, want %d each\n",
					h.i, l.Device, len(routes), routes, len(neighs), neighs, len(fdb), fdb, len(want)-1)
			}
		}
		if last == "" {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	c.t.Fatalf("peer state never matched %d hosts:\n%s", len(want), last)
}

// overlayNets covers the file store here; the etcd store has its own test.
func TestOverlayFileStore(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	c.storeFlags = fileStore(filepath.Join(c.dir, "store"))
	testOverlayCluster(t, c, nil)
}

// The same on a real etcd reachable on the underlay (in the underlay
// namespace), restarted midway: while it is down the containers keep
// talking (the agents keep their kernel state), and after it is back a new
// host is learned by everyone.
func TestOverlayEtcd(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	ctx := testCtx(t, time.Minute)
	gw := lab.UnderlayGateway.Addr().String()
	e := lab.StartTestEtcd(t, ctx, lab.EtcdOptions{
		Dir: filepath.Join(c.dir, "etcd"), NetNS: c.u.NS,
		ClientURL: "http://" + gw + ":2379", PeerURL: "http://" + gw + ":2380",
	})
	c.storeFlags = []string{"-store", "etcd", "-etcd-endpoints", e.Endpoint()}
	testOverlayCluster(t, c, func(ctx context.Context, cs []*ovContainer) {
		if err := e.Stop(); err != nil {
			t.Fatal(err)
		}
		// Half the lease TTL without a store: the agents' renewals and
		// watches fail, and every peer stays programmed.
		time.Sleep(ovLeaseTTL / 2)
		c.wantPeers(ctx, cs[0].host, cs[2].host, cs[4].host)
		pingMesh(ctx, t, cs)
		if err := e.Restart(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// testOverlayCluster is the multi-host scenario on c's store: three hosts
// with two containers each, everyone reaches everyone, DF packets of 1400
// bytes cross, the outside sees the host's address, other containers see
// the container's own; a fourth host joins and is reached; a stopped
// agent's host leaves the others' kernel state after its lease's TTL.
// midway, when set, runs with the three hosts up (an etcd restart, say)
// and the scenario goes on after it.
func testOverlayCluster(t *testing.T, c *ovCluster, midway func(ctx context.Context, cs []*ovContainer)) {
	ctx := testCtx(t, 3*time.Minute)
	var hosts []*ovHost
	var cs []*ovContainer
	for i := 1; i <= 3; i++ {
		h := c.addHost(ctx, i)
		hosts = append(hosts, h)
		cs = append(cs, h.addContainer(ctx, fmt.Sprintf("c%da", i)), h.addContainer(ctx, fmt.Sprintf("c%db", i)))
	}
	c.wantPeers(ctx, hosts...)
	pingMesh(ctx, t, cs)

	t.Run("DF", func(t *testing.T) {
		if err := cs[0].ns.PingWith(ctx, cs[5].v4.Addr(), lab.PingOptions{Size: 1400, DF: true}); err != nil {
			t.Errorf("1400-byte DF packet from %s to %s: %v", cs[0], cs[5], err)
		}
		// The container's MTU is the underlay's less 50: a bigger DF
		// packet is refused at the sender, never silently dropped.
		l := hosts[0].waitReady(ctx)
		err := cs[0].ns.PingWith(ctx, cs[5].v4.Addr(), lab.PingOptions{Size: l.MTU + 1, DF: true})
		if !errors.Is(err, lab.ErrMsgSize) {
			t.Errorf("%d-byte DF packet (MTU %d) = %v, want EMSGSIZE at the sender", l.MTU+1, l.MTU, err)
		}
	})
	t.Run("Sources", func(t *testing.T) {
		// Across hosts the source is the container's own address.
		ln, err := cs[4].ns.ListenTCP(netip.AddrPortFrom(cs[4].v4.Addr(), 0))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if _, err := cs[0].ns.DialTCP(ctx, ln.Addr); err != nil {
			t.Fatal(err)
		}
		if src, err := ln.Accepted(ctx); err != nil || src.Addr() != cs[0].v4.Addr() {
			t.Errorf("cross-host connection came from %v (%v), want %s", src, err, cs[0].v4.Addr())
		}
		// To the outside (the underlay's own address), the host's.
		out, err := c.u.NS.ListenTCP(netip.AddrPortFrom(lab.UnderlayGateway.Addr(), 0))
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		if _, err := cs[2].ns.DialTCP(ctx, out.Addr); err != nil {
			t.Fatal(err)
		}
		if src, err := out.Accepted(ctx); err != nil || src.Addr() != lab.HostAddr(2).Addr() {
			t.Errorf("outside saw %v (%v), want host 2's %s", src, err, lab.HostAddr(2).Addr())
		}
	})
	if t.Failed() {
		return
	}
	if midway != nil {
		midway(ctx, cs)
	}

	h4 := c.addHost(ctx, 4)
	cs = append(cs, h4.addContainer(ctx, "c4a"))
	c.wantPeers(ctx, append(hosts, h4)...)
	pingMesh(ctx, t, cs)

	// Host 4's agent stops without releasing its lease: the others drop
	// it once the lease expires; their own traffic keeps flowing.
	h4.agent.Stop(syscall.SIGKILL)
	c.wantPeers(ctx, hosts...)
	pingMesh(ctx, t, cs[:6])
}

// leftovers lists what h still holds for container c: its host veth, its
// address lease, its attachment record.
func (h *ovHost) leftovers(ctx context.Context, c *container) []string {
	h.c.t.Helper()
	var left []string
	veth := owner.Owner{Network: h.c.network, ContainerID: c.att.ContainerID, IfName: c.att.IfName}.HostVeth()
	if _, err := h.ns.LinkByName(veth); err == nil {
		left = append(left, "host veth "+veth)
	} else if !errors.Is(err, lab.ErrNotFound) {
		h.c.t.Fatal(err)
	}
	leases, err := lab.LeaseFiles(filepath.Join(h.dataDir, "overlay-ipam"), h.c.network, c.att.ContainerID)
	if err != nil {
		h.c.t.Fatal(err)
	}
	for _, l := range leases {
		left = append(left, "lease "+l)
	}
	recs, _ := filepath.Glob(filepath.Join(h.dataDir, h.c.network, "*"))
	for _, r := range recs {
		if b, err := os.ReadFile(r); err == nil && strings.Contains(string(b), `"`+c.att.ContainerID+`"`) {
			left = append(left, "record "+r)
		}
	}
	return left
}

// The plugin's contract on one host: STATUS answers 50 and ADD 11 (leaving
// nothing) until the agent is ready; then ADD → CHECK → DEL → DEL again
// leaves nothing, GC removes what valid-attachments leaves out, and after
// the agent stops STATUS is 50 again while DEL still cleans up.
func TestOverlayLifecycle(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	c.storeFlags = fileStore(filepath.Join(c.dir, "store"))
	ctx := testCtx(t, time.Minute)
	h := c.newHost(ctx, 1)

	err := h.r.Status(ctx, h.conf.List)
	if err := lab.CNIError(err, 50, "berth-overlayd"); err != nil {
		t.Errorf("STATUS before the agent: %v", err)
	}
	early := h.newContainer(ctx, "early")
	_, err = h.r.Add(ctx, h.conf.List, early.att)
	if err := lab.CNIError(err, 11, "not ready"); err != nil {
		t.Errorf("ADD before the agent: %v", err)
	}
	if left := h.leftovers(ctx, early); len(left) > 0 {
		t.Errorf("refused ADD left %v", left)
	}

	h.startAgent(ctx)
	h.waitReady(ctx)
	if err := h.r.Status(ctx, h.conf.List); err != nil {
		t.Fatalf("STATUS with the agent ready: %v", err)
	}
	c1, c2, c3 := h.addContainer(ctx, "c1"), h.addContainer(ctx, "c2"), h.addContainer(ctx, "c3")
	pingMesh(ctx, t, []*ovContainer{c1, c2, c3})
	if err := h.r.Check(ctx, h.conf.List, c1.att); err != nil {
		t.Errorf("CHECK c1: %v", err)
	}
	for _, round := range []string{"DEL", "DEL again"} {
		if err := h.r.Del(ctx, h.conf.List, c1.att); err != nil {
			t.Fatalf("%s c1: %v", round, err)
		}
		if left := h.leftovers(ctx, c1.container); len(left) > 0 {
			t.Errorf("after %s c1: %v", round, left)
		}
	}

	// GC with only c2 valid: c3 goes, c2 stays and still works.
	if err := h.r.GC(ctx, h.conf.List, []lab.Attachment{c2.att}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if left := h.leftovers(ctx, c3.container); len(left) > 0 {
		t.Errorf("after GC, c3 (not valid) still has %v", left)
	}
	if left := h.leftovers(ctx, c2.container); len(left) != 3 {
		t.Errorf("after GC, c2 (valid) has %v, want its veth, lease and record", left)
	}
	if err := c2.ns.PingWithin(ctx, h.waitReady(ctx).Gateway, pingTimeout); err != nil {
		t.Errorf("c2 after GC: %v", err)
	}

	if err := h.agent.Stop(syscall.SIGTERM); err != nil {
		t.Errorf("agent exit on SIGTERM: %v", err)
	}
	err = h.r.Status(ctx, h.conf.List)
	if err := lab.CNIError(err, 50, "not ready"); err != nil {
		t.Errorf("STATUS after the agent stopped: %v", err)
	}
	if err := h.r.Del(ctx, h.conf.List, c2.att); err != nil {
		t.Fatalf("DEL c2 with the agent stopped: %v", err)
	}
	if left := h.leftovers(ctx, c2.container); len(left) > 0 {
		t.Errorf("after DEL c2 (agent stopped): %v", left)
	}
}

// lsOverlay is for debugging a failed run: the host's view of the overlay.
func (h *ovHost) lsOverlay(ctx context.Context) string {
	out, _ := h.ns.Output(ctx, "sh", "-c", "ip -d link; ip addr; ip route; ip neigh; bridge fdb")
	return string(out)
}
