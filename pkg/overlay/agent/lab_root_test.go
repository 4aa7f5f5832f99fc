package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/overlay"
	"github.com/berth-cni/berth/pkg/overlay/peerplan"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/file"
	"github.com/berth-cni/berth/pkg/overlay/vxlan"
)

// The network every lab test runs, on its own store directory.
const testNet = "ov"

var testCIDR = netip.MustParsePrefix("10.244.0.0/16")

// cluster is a multi-host lab: host namespaces on one underlay (lab's,
// 192.168.77.(10+i)/24 on eth0, default route via .1), a file store in a
// temporary directory, and a state directory per host that outlives its
// agents (as /run/berth/overlay does a restart).
type cluster struct {
	t        *testing.T
	u        *lab.Underlay
	storeDir string
	base     string
	hosts    map[int]*lab.NS
}

func newCluster(t *testing.T) *cluster {
	t.Helper()
	lab.RequireRoot(t)
	u, err := lab.NewUnderlay(context.Background(), "bov")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Errorf("lab cleanup: %v", err)
		}
	})
	base := t.TempDir()
	return &cluster{t: t, u: u, storeDir: filepath.Join(base, "store"), base: base, hosts: map[int]*lab.NS{}}
}

// host returns host i's namespace, creating it on first use.
func (c *cluster) host(i int) *lab.NS {
	c.t.Helper()
	if h, ok := c.hosts[i]; ok {
		return h
	}
	h, err := c.u.AddHost(context.Background(), i)
	if err != nil {
		c.t.Fatal(err)
	}
	c.hosts[i] = h
	return h
}

func (c *cluster) stateDir(i int) string { return filepath.Join(c.base, fmt.Sprintf("state-h%d", i)) }

// agentRun is one agent running in a goroutine for a host.
type agentRun struct {
	i      int
	ns     *lab.NS
	addr   string // of /healthz and /metrics, in the host's namespace
	st     store.Store
	cancel context.CancelFunc
	done   chan error
}

// testConfig is the config of host i's agent in c.
func (c *cluster) testConfig(i int) Config {
	return Config{
		Network:  store.Network{Name: testNet, CIDR: testCIDR, SubnetLen: 24, VNI: 1, Port: 4789},
		Node:     fmt.Sprintf("h%d", i),
		StateDir: c.stateDir(i),
		LeaseTTL: 2 * time.Second,
		AckBound: 2 * time.Second,
		Netns:    c.host(i).Path,
		Log:      lab.TestLog{TB: c.t, Prefix: fmt.Sprintf("h%d", i)},
	}
}

// start runs host i's agent with its own connection to the store and an
// HTTP listener on a free port of the host's loopback. edit changes the
// config. The agent is stopped in t.Cleanup if the test did not.
func (c *cluster) start(i int, edit ...func(*Config)) *agentRun {
	c.t.Helper()
	cfg := c.testConfig(i)
	st, err := file.New(c.storeDir)
	if err != nil {
		c.t.Fatal(err)
	}
	cfg.Store = st
	for _, e := range edit {
		e(&cfg)
	}
	h := c.host(i)
	err = h.Do(func() error {
		var lerr error
		cfg.Listener, lerr = net.Listen("tcp", "127.0.0.1:0")
		return lerr
	})
	if err != nil {
		c.t.Fatal(err)
	}
	a, err := New(cfg)
	if err != nil {
		c.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &agentRun{i: i, ns: h, addr: cfg.Listener.Addr().String(), st: cfg.Store, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	c.t.Cleanup(func() {
		if err := r.stop(); err != nil {
			c.t.Errorf("h%d: %v", i, err)
		}
	})
	return r
}

// stop ends the agent like SIGTERM does and returns Run's error. Stopping
// twice returns nil.
func (r *agentRun) stop() error {
	if r.cancel == nil {
		return nil
	}
	r.cancel()
	return r.wait(15 * time.Second)
}

// wait returns Run's error once it returned by itself (or was stopped).
func (r *agentRun) wait(timeout time.Duration) error {
	select {
	case err := <-r.done:
		r.cancel()
		r.cancel = nil
		r.st.Close()
		return err
	case <-time.After(timeout):
		return fmt.Errorf("agent did not return within %v", timeout)
	}
}

func (c *cluster) local(i int) (overlay.Local, error) {
	return overlay.ReadLocal(c.stateDir(i), testNet)
}

// waitReady waits until host i's Local file says ready, and returns it.
func (c *cluster) waitReady(i int) overlay.Local {
	c.t.Helper()
	var l overlay.Local
	lab.WaitFor(c.t, 15*time.Second, fmt.Sprintf("h%d ready", i), func() string {
		var err error
		if l, err = c.local(i); err != nil {
			return err.Error()
		}
		if ok, why := l.Live(c.stateDir(i)); !ok {
			return why
		}
		return ""
	})
	return l
}

// deviceOf returns the VXLAN device in host i as the lab sees it.
func (c *cluster) deviceOf(i int) (lab.Link, error) {
	return c.host(i).LinkByName(vxlan.DeviceName(testNet))
}

// entries renders the overlay entries of host i's device.
func (c *cluster) entries(i int) (string, error) {
	l, err := c.deviceOf(i)
	if err != nil {
		return "", err
	}
	n, err := netns.Open(c.host(i).Path)
	if err != nil {
		return "", err
	}
	defer n.Close()
	e, err := vxlan.Entries(n, vxlan.Device{Name: l.Name, Index: l.Index})
	return e.String(), err
}

// wantEntries renders what host i's device must hold for the remote hosts
// others: one route, neighbour and FDB entry each, from their Local files,
// devices and underlay addresses.
func (c *cluster) wantEntries(others ...int) (string, error) {
	var peers []peerplan.Peer
	for _, j := range others {
		l, err := c.local(j)
		if err != nil {
			return "", err
		}
		d, err := c.deviceOf(j)
		if err != nil {
			return "", err
		}
		peers = append(peers, peerplan.Peer{Host: fmt.Sprintf("h%d", j), Subnet: l.Subnet, VTEP: lab.HostAddr(j).Addr(), MAC: d.MAC})
	}
	return peerplan.WantEntries(peers).String(), nil
}

// waitPeers waits until host i's device holds exactly the entries for
// others.
func (c *cluster) waitPeers(i int, others ...int) {
	c.t.Helper()
	lab.WaitFor(c.t, 15*time.Second, fmt.Sprintf("h%d programs %v", i, others), func() string {
		want, err := c.wantEntries(others...)
		if err != nil {
			return err.Error()
		}
		got, err := c.entries(i)
		if err != nil {
			return err.Error()
		}
		if got != want {
			return fmt.Sprintf("device holds:\n%swant:\n%s", got, want)
		}
		return ""
	})
}

// get fetches path from the agent's HTTP listener, dialling from inside
// its host's namespace (the listener is on that namespace's loopback).
func (r *agentRun) get(t *testing.T, path string) (int, string) {
	t.Helper()
	code, body, err := r.ns.HTTPGet(context.Background(), "http://"+r.addr+path)
	if err != nil {
		t.Fatalf("GET %s on h%d: %v", path, r.i, err)
	}
	return code, body
}

// metric returns the value of the series whose line starts with prefix
// (name and labels), or "" when absent.
func metric(body, prefix string) string {
	sc := bufio.NewScanner(strings.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix+" "); ok {
			return v
		}
	}
	return ""
}

// ping checks that host i reaches host j's VXLAN device address over the
// overlay.
func (c *cluster) ping(i, j int) {
	c.t.Helper()
	lj, err := c.local(j)
	if err != nil {
		c.t.Fatal(err)
	}
	if err := c.host(i).PingWithin(context.Background(), lj.Subnet.Addr(), 5*time.Second); err != nil {
		c.t.Fatalf("h%d → h%d over the overlay: %v", i, j, err)
	}
}

// A cluster's life: two hosts mesh, traffic flows between their VXLAN
// devices, the local state and HTTP answers say so, a third host joins
// and is programmed on the others, a stopped host leaves the others after
// its lease's TTL (not at once) and keeps its kernel state, and a
// restarted agent gets its old subnet back.
func TestAgentCluster(t *testing.T) {
	c := newCluster(t)
	a1, a2 := c.start(1), c.start(2)
	l1, l2 := c.waitReady(1), c.waitReady(2)

	for i, l := range []overlay.Local{l1, l2} {
		if l.Network != testNet || l.CIDR != testCIDR || l.Subnet.Bits() != 24 || !testCIDR.Contains(l.Subnet.Addr()) ||
			l.Gateway != l.Subnet.Addr().Next() || l.MTU != 1450 || l.VNI != 1 || l.Device != vxlan.DeviceName(testNet) ||
			l.PID != os.Getpid() || l.Reason != "" || l.Since.IsZero() {
			t.Errorf("h%d Local: %+v", i+1, l)
		}
	}
	if l1.Subnet == l2.Subnet {
		t.Fatalf("both hosts leased %s", l1.Subnet)
	}
	c.waitPeers(1, 2)
	c.waitPeers(2, 1)
	for i, l := range []overlay.Local{l1, l2} {
		d, err := c.deviceOf(i + 1)
		if err != nil {
			t.Fatal(err)
		}
		if len(d.Addrs) < 1 || d.Addrs[0] != netip.PrefixFrom(l.Subnet.Addr(), 32) || !d.Up {
			t.Errorf("h%d device: %+v, want up with %s/32", i+1, d, l.Subnet.Addr())
		}
		if fwd, err := c.host(i + 1).ReadSysctl("net/ipv4/ip_forward"); err != nil || fwd != "1" {
			t.Errorf("h%d ip_forward = %q, %v", i+1, fwd, err)
		}
	}
	c.ping(1, 2)
	c.ping(2, 1)

	if code, body := a1.get(t, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("h1 /healthz: %d %q", code, body)
	}
	_, m := a1.get(t, "/metrics")
	for series, want := range map[string]string{
		`berth_overlay_ready{network="ov"}`:                                            "1",
		`berth_overlay_peers{network="ov"}`:                                            "1",
		`berth_overlay_lease_lost_total{network="ov"}`:                                 "0",
		`berth_overlay_sync_errors_total{network="ov"}`:                                "0",
		`berth_overlay_info{network="ov",subnet="` + l1.Subnet.String() + `",vni="1"}`: "1",
	} {
		if got := metric(m, series); got != want {
			t.Errorf("h1 %s = %q, want %q\n%s", series, got, want, m)
		}
	}
	if got := metric(m, `berth_overlay_syncs_total{network="ov"}`); got == "" || got == "0" {
		t.Errorf("h1 syncs_total = %q, want at least 1", got)
	}

	// A third host joins later.
	c.start(3)
	c.waitReady(3)
	c.waitPeers(1, 2, 3)
	c.waitPeers(2, 1, 3)
	c.waitPeers(3, 1, 2)
	c.ping(1, 3)
	c.ping(3, 2)
	if _, m := a1.get(t, "/metrics"); metric(m, `berth_overlay_peers{network="ov"}`) != "2" {
		t.Errorf("h1 peers after h3 joined:\n%s", m)
	}

	// h2 stops without releasing: its Local says so at once, the others
	// drop it once its lease expired, it keeps its device and entries.
	stopped := time.Now()
	if err := a2.stop(); err != nil {
		t.Fatal(err)
	}
	if l, err := c.local(2); err != nil || l.Ready || l.Reason != "agent stopped" || l.Subnet != l2.Subnet {
		t.Errorf("h2 Local after stop: %+v, %v", l, err)
	}
	c.waitPeers(1, 3)
	c.waitPeers(3, 1)
	if gone := time.Since(stopped); gone < time.Second {
		t.Errorf("h2 left the others %v after it stopped: before its lease (ttl 2s, renewed every 0.67s) could expire", gone)
	}
	c.waitPeers(2, 1, 3)

	// h2 comes back: same subnet (its state file and the store agree).
	c.start(2)
	if l := c.waitReady(2); l.Subnet != l2.Subnet {
		t.Errorf("restarted h2 leased %s, had %s", l.Subnet, l2.Subnet)
	}
	c.waitPeers(1, 2, 3)
	c.waitPeers(2, 1, 3)
	c.ping(1, 2)
}

// The agent repairs what someone else changes on its device: a deleted
// route comes back, a stray one goes, and a deleted device is created
// again and its new MAC published, so the other hosts follow.
func TestAgentRepairs(t *testing.T) {
	c := newCluster(t)
	c.start(1, func(cfg *Config) { cfg.Resync = 200 * time.Millisecond })
	c.start(2)
	c.waitReady(1)
	l2 := c.waitReady(2)
	c.waitPeers(1, 2)
	c.waitPeers(2, 1)
	h1, dev := c.host(1), vxlan.DeviceName(testNet)
	ctx := context.Background()
	for _, cmd := range [][]string{
		{"ip", "route", "del", l2.Subnet.String(), "dev", dev},
		{"ip", "route", "add", "10.244.99.0/24", "via", "10.244.99.0", "dev", dev, "onlink"},
	} {
		if _, err := h1.Output(ctx, cmd[0], cmd[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	c.waitPeers(1, 2)

	old, err := c.deviceOf(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err = h1.Output(ctx, "ip", "link", "del", dev); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, 10*time.Second, "h1 recreates its device", func() string {
		d, derr := c.deviceOf(1)
		if derr != nil {
			return derr.Error()
		}
		if d.MAC == old.MAC {
			return "same MAC as the deleted device"
		}
		return ""
	})
	c.waitPeers(1, 2)
	c.waitPeers(2, 1)
	c.ping(2, 1)
}
