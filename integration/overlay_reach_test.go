package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// onceTimeout is how long a one-request ping waits for its reply: ping -W2.
const onceTimeout = 2 * time.Second

// joinRounds is how many hosts join, one after another, in the
// reachability test; BERTH_JOIN_ROUNDS overrides it (a quick local run).
func joinRounds(t *testing.T) int {
	if s := os.Getenv("BERTH_JOIN_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("BERTH_JOIN_ROUNDS=%q: want a positive number", s)
		}
		return n
	}
	return 50
}

// pingOnce sends exactly one echo request per pair, all at once, as a user
// checking reachability would (no retry: a retry hides a lost first
// packet), and returns the failures.
func pingOnce(ctx context.Context, pairs []pingPair) []string {
	var mu sync.Mutex
	var failed []string
	var wg sync.WaitGroup
	for _, p := range pairs {
		wg.Go(func() {
			if err := p.from.ns.PingOnce(ctx, p.to, onceTimeout); err != nil {
				mu.Lock()
				failed = append(failed, fmt.Sprintf("%s → %s (%s): %v", p.from, p.toName, p.to, err))
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed
}

// crossHost is every pair of containers on different hosts.
func crossHost(cs []*ovContainer) []pingPair {
	var pairs []pingPair
	for _, a := range cs {
		for _, b := range cs {
			if a.host != b.host {
				pairs = append(pairs, pingPair{from: a.container, to: b.v4.Addr(), toName: b.name})
			}
		}
	}
	return pairs
}

func TestOverlayReachableAtOnceFile(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	c.storeFlags = fileStore(filepath.Join(c.dir, "store"))
	testReachableAtOnce(t, c)
}

func TestOverlayReachableAtOnceEtcd(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	ctx := testCtx(t, time.Minute)
	gw := lab.UnderlayGateway.Addr().String()
	e := lab.StartTestEtcd(t, ctx, lab.EtcdOptions{
		Dir: filepath.Join(c.dir, "etcd"), NetNS: c.u.NS,
		ClientURL: "http://" + gw + ":2379", PeerURL: "http://" + gw + ":2380",
	})
	c.storeFlags = []string{"-store", "etcd", "-etcd-endpoints", e.Endpoint()}
	testReachableAtOnce(t, c)
}

// testReachableAtOnce: a container is reachable from every host the moment
// its host's agent is ready and its ADD returned. Three hosts come up one
// after another, two containers each, and every cross-host pair answers
// its first and only echo request; then, round after round, a new host
// joins (its agent started, ready, a container ADDed on it) and a
// container on every other host reaches it with one request.
func testReachableAtOnce(t *testing.T, c *ovCluster) {
	ctx := testCtx(t, 10*time.Minute)
	// A lease TTL that a loaded machine's renewals keep: a host whose
	// lease lapses for a moment leaves its peers' kernels, and a first
	// ping towards it then fails for that reason, not for this test's.
	// The joining hosts release their lease as they leave.
	c.leaseTTL = 10 * time.Second
	var cs []*ovContainer
	var base []*ovHost
	for i := 1; i <= 3; i++ {
		h := c.addHost(ctx, i)
		base = append(base, h)
		cs = append(cs, h.addContainer(ctx, fmt.Sprintf("c%da", i)), h.addContainer(ctx, fmt.Sprintf("c%db", i)))
	}
	if failed := pingOnce(ctx, crossHost(cs)); len(failed) > 0 {
		t.Errorf("%d of %d first pings across hosts failed:\n%v", len(failed), len(crossHost(cs)), failed)
	}
	rounds := joinRounds(t)
	lost := 0
	for r := range rounds {
		i := 4 + r
		h := c.newHost(ctx, i)
		h.flags = []string{"-release-on-exit"}
		h.startAgent(ctx)
		h.waitReady(ctx)
		n := h.addContainer(ctx, fmt.Sprintf("j%d", i))
		var pairs []pingPair
		for _, b := range base {
			pairs = append(pairs, pingPair{from: cs[2*(b.i-1)].container, to: n.v4.Addr(), toName: n.name})
		}
		if failed := pingOnce(ctx, pairs); len(failed) > 0 {
			lost++
			t.Errorf("round %d, host h%d: %v", r+1, i, failed)
		}
		// The host leaves: its agent releases its lease (its peers drop
		// it at once; the store keeps its subnet for it, so the next
		// round's host takes another) and its namespace goes.
		if err := h.agent.Stop(syscall.SIGTERM); err != nil {
			t.Errorf("stop h%d's agent: %v", i, err)
		}
		if err := h.ns.Delete(); err != nil {
			t.Error(err)
		}
	}
	t.Logf("%d of %d joins: a first ping from an older host failed", lost, rounds)
}

// An agent SIGKILLed and started again leaves its host's traffic alone: it
// finds its device and its peers' entries in place, takes its own lease
// (the same subnet) and removes nothing, so a ping every 10 ms across the
// restart loses no packet, in either direction; and its peers, which see
// its lease written again, keep their entries too.
func TestOverlayAgentRestartKeepsTraffic(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	c.storeFlags = fileStore(filepath.Join(c.dir, "store"))
	ctx := testCtx(t, 2*time.Minute)
	h1, h2 := c.addHost(ctx, 1), c.addHost(ctx, 2)
	c1, c2 := h1.addContainer(ctx, "c1"), h2.addContainer(ctx, "c2")
	before := h2.waitReady(ctx)
	if failed := pingOnce(ctx, crossHost([]*ovContainer{c1, c2})); len(failed) > 0 {
		t.Fatalf("before the restart: %v", failed)
	}
	for _, restart := range []*ovHost{h2, h1} {
		sctx, stop := context.WithCancel(ctx)
		type count struct{ sent, answered int }
		got := make(chan count, 2)
		for _, p := range []struct {
			from *ovContainer
			to   *ovContainer
		}{{c1, c2}, {c2, c1}} {
			go func() {
				s, a, err := p.from.ns.PingStream(sctx, p.to.v4.Addr(), 10*time.Millisecond)
				if err != nil {
					t.Error(err)
				}
				got <- count{s, a}
			}()
		}
		time.Sleep(300 * time.Millisecond)
		if err := restart.agent.Stop(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		restart.startAgent(ctx)
		after := restart.waitReady(ctx)
		time.Sleep(500 * time.Millisecond) // the restarted agent's first syncs and acknowledgements
		stop()
		for range 2 {
			n := <-got
			if n.sent < 50 || n.answered != n.sent {
				t.Errorf("restart of h%d: %d of %d echo requests lost (every 10 ms across the restart)", restart.i, n.sent-n.answered, n.sent)
			} else {
				t.Logf("restart of h%d: %d echo requests, none lost", restart.i, n.sent)
			}
		}
		if restart == h2 && after.Subnet != before.Subnet {
			t.Errorf("h2 came back with subnet %s, had %s", after.Subnet, before.Subnet)
		}
	}
}

// A host's readiness waits for a peer that is slow to program it: with
// h3's agent stopped (SIGSTOP: a host busy elsewhere), a joining h4 is not
// ready until h3 runs again and has h4 in its kernel, and then h3's
// container reaches h4's with its first echo request. A peer that stays
// silent past -ack-bound is waited for no longer: h5 is ready without h3
// and names it on /healthz and in its metrics.
func TestOverlayReadyWaitsForSlowPeer(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	c.storeFlags = fileStore(filepath.Join(c.dir, "store"))
	c.leaseTTL = 10 * time.Second // h3 keeps its lease while it is stopped
	ctx := testCtx(t, 2*time.Minute)
	var cs []*ovContainer
	hosts := map[int]*ovHost{}
	for i := 1; i <= 3; i++ {
		hosts[i] = c.addHost(ctx, i)
		cs = append(cs, hosts[i].addContainer(ctx, fmt.Sprintf("c%d", i)))
	}
	h3 := hosts[3]
	const frozen = 1500 * time.Millisecond
	if err := syscall.Kill(h3.agent.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	resumed := make(chan time.Time, 1)
	go func() {
		time.Sleep(frozen)
		syscall.Kill(h3.agent.PID(), syscall.SIGCONT)
		resumed <- time.Now()
	}()
	h4 := c.newHost(ctx, 4)
	h4.flags = []string{"-ack-bound", "10s"}
	h4.startAgent(ctx)
	h4.waitReady(ctx)
	ready := time.Now()
	if at := <-resumed; ready.Before(at) {
		t.Errorf("h4 was ready %v before h3, stopped, could acknowledge its lease", at.Sub(ready))
	}
	j4 := h4.addContainer(ctx, "j4")
	var pairs []pingPair
	for _, from := range cs {
		pairs = append(pairs, pingPair{from: from.container, to: j4.v4.Addr(), toName: j4.name})
	}
	if failed := pingOnce(ctx, pairs); len(failed) > 0 {
		t.Errorf("first pings to h4's container: %v", failed)
	}

	// Stopped for longer than the bound: h5 does not wait for h3 for ever.
	if err := syscall.Kill(h3.agent.PID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(h3.agent.PID(), syscall.SIGCONT)
	h5 := c.newHost(ctx, 5)
	h5.flags = []string{"-ack-bound", "1s"}
	start := time.Now()
	h5.startAgent(ctx)
	h5.waitReady(ctx)
	if took := time.Since(start); took < time.Second {
		t.Errorf("h5 ready after %v, before its 1 s bound for silent h3", took)
	}
	code, body, err := h5.ns.HTTPGet(ctx, "http://127.0.0.1:9614/healthz")
	if err != nil || code != 200 || !strings.Contains(body, "did not acknowledge") || !strings.Contains(body, "h3") {
		t.Errorf("h5 /healthz: %d %q, %v; want 200 naming h3 late", code, body, err)
	}
}
