package agent

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/vxlan"
)

// flakyStore is a store the test can take down (every call fails with
// ErrUnavailable), poke (an extra change signal) and make lose the
// current lease.
type flakyStore struct {
	store.Store
	down atomic.Bool
	poke chan struct{}

	mu   sync.Mutex
	last *flakyHold
}

func newFlaky(s store.Store) *flakyStore { return &flakyStore{Store: s, poke: make(chan struct{}, 1)} }

func (f *flakyStore) fail() error {
	if f.down.Load() {
		return fmt.Errorf("flaky store is down: %w", store.ErrUnavailable)
	}
	return nil
}

func (f *flakyStore) EnsureNetwork(ctx context.Context, n store.Network) (store.Network, error) {
	if err := f.fail(); err != nil {
		return store.Network{}, err
	}
	return f.Store.EnsureNetwork(ctx, n)
}

func (f *flakyStore) Leases(ctx context.Context, network string) ([]store.Lease, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	return f.Store.Leases(ctx, network)
}

func (f *flakyStore) Acquire(ctx context.Context, network string, want store.Lease, ttl time.Duration) (store.Hold, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	h, err := f.Store.Acquire(ctx, network, want, ttl)
	if err != nil {
		return nil, err
	}
	fh := &flakyHold{Hold: h, lost: make(chan struct{}), kill: make(chan struct{})}
	go func() {
		select {
		case <-h.Lost():
		case <-fh.kill:
		case <-ctx.Done():
			return
		}
		close(fh.lost)
	}()
	f.mu.Lock()
	f.last = fh
	f.mu.Unlock()
	return fh, nil
}

func (f *flakyStore) Changes(ctx context.Context, network string) <-chan struct{} {
	in := f.Store.Changes(ctx, network)
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		for {
			select {
			case _, ok := <-in:
				if !ok {
					return
				}
			case <-f.poke:
			}
			select {
			case out <- struct{}{}:
			default:
			}
		}
	}()
	return out
}

// loseLease closes the Lost channel of the last Hold handed out.
func (f *flakyStore) loseLease() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.last.once.Do(func() { close(f.last.kill) })
}

type flakyHold struct {
	store.Hold
	lost chan struct{}
	kill chan struct{}
	once sync.Once
}

func (h *flakyHold) Lost() <-chan struct{} { return h.lost }

// counter reads a counter of the agent's metrics.
func (r *agentRun) counter(t *testing.T, name string) int {
	t.Helper()
	_, m := r.get(t, "/metrics")
	v, err := strconv.Atoi(metric(m, name+`{network="ov"}`))
	if err != nil {
		t.Fatalf("h%d %s: %v\n%s", r.i, name, err, m)
	}
	return v
}

// An agent whose store is down is not ready and says why (healthz 503,
// Local); once ready, a store outage keeps the kernel state and
// readiness, is counted, and the agent catches up with what changed
// meanwhile when the store is back; a lost lease makes it acquire the
// same subnet again.
func TestAgentStoreTrouble(t *testing.T) {
	c := newCluster(t)
	c.start(2)
	c.waitReady(2)

	var flaky *flakyStore
	flaky1 := func(cfg *Config) { flaky = newFlaky(cfg.Store); cfg.Store = flaky }
	// h1 starts with its store down.
	a1 := c.start(1, flaky1, func(*Config) { flaky.down.Store(true) })
	lab.WaitFor(t, 10*time.Second, "h1 reports the store outage", func() string {
		code, body := a1.get(t, "/healthz")
		if code != 503 || !strings.Contains(body, "store the network config: flaky store is down") {
			return fmt.Sprintf("healthz %d %q", code, body)
		}
		l, err := c.local(1)
		if err != nil {
			return err.Error()
		}
		if l.Ready || !strings.Contains(l.Reason, "flaky store is down") || l.Device != vxlan.DeviceName(testNet) {
			return fmt.Sprintf("Local %+v", l)
		}
		return ""
	})
	if n := a1.counter(t, "berth_overlay_store_errors_total"); n < 1 {
		t.Errorf("store errors while down: %d", n)
	}
	flaky.down.Store(false)
	l1 := c.waitReady(1)
	c.waitPeers(1, 2)
	c.waitPeers(2, 1)

	// Down while running: the next sync fails, the peers stay, h1 stays
	// ready. h3 joins meanwhile: h1 cannot see it yet.
	errs := a1.counter(t, "berth_overlay_store_errors_total")
	flaky.down.Store(true)
	flaky.poke <- struct{}{}
	lab.WaitFor(t, 5*time.Second, "h1 counts the failed sync", func() string {
		if n := a1.counter(t, "berth_overlay_store_errors_total"); n <= errs {
			return fmt.Sprintf("store errors %d", n)
		}
		return ""
	})
	c.start(3)
	c.waitReady(3)
	c.waitPeers(2, 1, 3)
	c.waitPeers(1, 2)
	if code, _ := a1.get(t, "/healthz"); code != 200 {
		t.Errorf("h1 healthz during a store outage: %d, want 200 (the kernel state is intact)", code)
	}
	c.ping(1, 2)

	// Back: h1 catches up through its retry, without a change signal.
	flaky.down.Store(false)
	c.waitPeers(1, 2, 3)
	c.ping(1, 3)

	// The lease is lost: h1 acquires the same subnet again and is ready.
	flaky.loseLease()
	lab.WaitFor(t, 10*time.Second, "h1 re-acquires its lease", func() string {
		if n := a1.counter(t, "berth_overlay_lease_lost_total"); n != 1 {
			return fmt.Sprintf("lease lost %d", n)
		}
		if code, body := a1.get(t, "/healthz"); code != 200 {
			return fmt.Sprintf("healthz %d %q", code, body)
		}
		return ""
	})
	if l := c.waitReady(1); l.Subnet != l1.Subnet {
		t.Errorf("h1 re-acquired %s, had %s", l.Subnet, l1.Subnet)
	}
	c.waitPeers(2, 1, 3)
	c.ping(2, 1)
}

// A host whose flags disagree with the network stored by the first one is
// refused with a message naming both configs, and creates nothing.
func TestAgentNetworkConflict(t *testing.T) {
	c := newCluster(t)
	c.start(1)
	c.waitReady(1)
	r := c.start(2, func(cfg *Config) { cfg.Network.VNI = 7 })
	err := r.wait(10 * time.Second)
	if err == nil || !strings.Contains(err.Error(), "vni 1") || !strings.Contains(err.Error(), "vni 7") ||
		!strings.Contains(err.Error(), "refusing to run") {
		t.Fatalf("Run with another VNI: %v", err)
	}
	l, lerr := c.local(2)
	if lerr != nil || l.Ready || !strings.Contains(l.Reason, "refusing to run") {
		t.Errorf("Local of the refused host: %+v, %v", l, lerr)
	}
	if _, derr := c.deviceOf(2); derr == nil {
		t.Error("the refused host created its VXLAN device")
	}
}
