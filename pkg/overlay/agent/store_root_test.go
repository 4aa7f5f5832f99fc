package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/vxlan"
	"github.com/berth-cni/berth/pkg/state"
)

// flakyStore is a store the test can take down (every call fails with
// ErrUnavailable, the watch stalls) and make lose the current lease.
type flakyStore struct {
	store.Store
	down atomic.Bool

	mu   sync.Mutex
	last *flakyHold
}

func newFlaky(s store.Store) *flakyStore { return &flakyStore{Store: s} }

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

func (f *flakyStore) Shared(ctx context.Context, network string) (store.Shared, error) {
	if err := f.fail(); err != nil {
		return store.Shared{}, err
	}
	return f.Store.Shared(ctx, network)
}

func (f *flakyStore) UpdateShared(ctx context.Context, network string, fn func(store.Attrs) (store.Attrs, error)) (store.Shared, error) {
	if err := f.fail(); err != nil {
		return store.Shared{}, err
	}
	return f.Store.UpdateShared(ctx, network, fn)
}

func (f *flakyStore) Acquire(ctx context.Context, network string, want store.Lease, ttl time.Duration) (store.Hold, error) {
	if err := f.fail(); err != nil {
		return nil, err
	}
	h, err := f.Store.Acquire(ctx, network, want, ttl)
	if err != nil {
		return nil, err
	}
	fh := &flakyHold{Hold: h, f: f, lost: make(chan struct{}), kill: make(chan struct{})}
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

// Watch passes the store's events on while the store is up. While it is
// down it passes nothing (as a watch whose store is unreachable); when it
// is back, it sends a fresh snapshot, as a backend does after a gap.
func (f *flakyStore) Watch(ctx context.Context, network string) <-chan store.Event {
	in := f.Store.Watch(ctx, network)
	out := make(chan store.Event)
	go func() {
		defer close(out)
		gap := false
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		for {
			var ev store.Event
			select {
			case <-ctx.Done():
				return
			case e, ok := <-in:
				if !ok {
					return
				}
				if f.down.Load() {
					gap = true
					continue
				}
				ev = e
			case <-tick.C:
				if !gap || f.down.Load() {
					continue
				}
				leases, err := f.Store.Leases(ctx, network)
				if err != nil {
					continue
				}
				sh, err := f.Store.Shared(ctx, network)
				if err != nil {
					continue
				}
				rev := sh.Rev
				for _, l := range leases {
					rev = max(rev, l.Rev)
				}
				ev, gap = store.Event{Reset: true, Leases: leases, Shared: &sh, Rev: rev}, false
			}
			select {
			case out <- ev:
			case <-ctx.Done():
				return
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
	f    *flakyStore
	lost chan struct{}
	kill chan struct{}
	once sync.Once
}

func (h *flakyHold) Lost() <-chan struct{} { return h.lost }

func (h *flakyHold) Update(ctx context.Context, fn func(store.Attrs) (store.Attrs, error)) (store.Lease, error) {
	if err := h.f.fail(); err != nil {
		return store.Lease{}, err
	}
	return h.Hold.Update(ctx, fn)
}

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

	// Down while running: the watch stalls, the peers stay, h1 stays
	// ready. h3 joins meanwhile: h1 cannot see it, so it cannot
	// acknowledge h3's lease; h3 waits for it the bound (the test's
	// AckBound), then is ready and names h1 as late.
	flaky.down.Store(true)
	a3 := c.start(3)
	c.waitReady(3)
	c.waitPeers(2, 1, 3)
	c.waitPeers(1, 2)
	if code, _ := a1.get(t, "/healthz"); code != 200 {
		t.Errorf("h1 healthz during a store outage: %d, want 200 (the kernel state is intact)", code)
	}
	if code, body := a3.get(t, "/healthz"); code != 200 || !strings.Contains(body, "did not acknowledge") || !strings.Contains(body, "h1") {
		t.Errorf("h3 healthz after h1's silence: %d %q, want 200 naming h1", code, body)
	}
	if _, m := a3.get(t, "/metrics"); !strings.Contains(m, `berth_overlay_ack_late{network="ov",peer="h1"} 1`) {
		t.Errorf("h3 metrics do not name h1 as late:\n%s", m)
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

// A store stall longer than the TTL (the CI failure the store's history
// is for): h1's lease expires in the store while h1 cannot reach it, h3
// joins meanwhile and gets a subnet nobody held, not h1's just freed one,
// and h1, back, leases its old subnet again, so the addresses of its
// containers stay valid and every host reaches it there.
func TestAgentExpiredLeaseComesBack(t *testing.T) {
	c := newCluster(t)
	var flaky *flakyStore
	a1 := c.start(1, func(cfg *Config) { flaky = newFlaky(cfg.Store); cfg.Store = flaky })
	l1 := c.waitReady(1)
	c.start(2)
	c.waitReady(2)
	c.waitPeers(1, 2)

	flaky.down.Store(true)
	expireLease(t, c.storeDir, l1.Subnet)
	lab.WaitFor(t, 10*time.Second, "h1 loses its lease", func() string {
		l, err := c.local(1)
		if err != nil {
			return err.Error()
		}
		if n := a1.counter(t, "berth_overlay_lease_lost_total"); n != 1 || l.Ready {
			return fmt.Sprintf("lease lost %d, Local %+v", n, l)
		}
		return ""
	})
	c.start(3)
	if l3 := c.waitReady(3); l3.Subnet == l1.Subnet {
		t.Fatalf("h3, joining while h1's lease had expired, got h1's %s", l1.Subnet)
	}

	flaky.down.Store(false)
	if l := c.waitReady(1); l.Subnet != l1.Subnet {
		t.Fatalf("h1 back after its lease expired leased %s; it had %s", l.Subnet, l1.Subnet)
	}
	c.waitPeers(1, 2, 3)
	c.waitPeers(3, 1, 2)
	c.ping(3, 1)
	c.ping(1, 2)
}

// expireLease leaves subnet's lease in the file store at dir expired, as
// a store stall past the TTL does: its expiry set a minute back, under
// the store's lock so that no renewal overwrites it meanwhile. The next
// reader under the lock (a renewal, another host's Acquire) buries it.
//
// Equivalent: flock $dir/ov/lock (rewrite leases/$subnet.json with "expires" a minute ago)
func expireLease(t *testing.T, dir string, subnet netip.Prefix) {
	t.Helper()
	d := filepath.Join(dir, testNet)
	l, err := lock.AcquireFile(filepath.Join(d, "lock"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Unlock(); err != nil {
			t.Error(err)
		}
	}()
	path := filepath.Join(d, "leases", store.SubnetKey(subnet, '_')+".json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]json.RawMessage
	if err = json.Unmarshal(b, &rec); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	rec["expires"] = json.RawMessage(strconv.FormatInt(time.Now().Add(-time.Minute).UnixMilli(), 10))
	if b, err = json.Marshal(rec); err != nil {
		t.Fatal(err)
	}
	if err = state.WriteAtomic(path, b); err != nil {
		t.Fatal(err)
	}
}
