package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

const testPrefix = "/berth-test"

// startEtcd runs a one-member etcd on 127.0.0.1 for t (lab.StartTestEtcd),
// waiting at most storetest.Timeout for it to answer.
func startEtcd(t testing.TB) *lab.Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), storetest.Timeout)
	defer cancel()
	return lab.StartTestEtcd(t, ctx, lab.EtcdOptions{})
}

// newEtcdStore connects to endpoint under testPrefix; a zero timeout is
// the default request timeout.
func newEtcdStore(t testing.TB, endpoint string, timeout time.Duration) store.Store {
	t.Helper()
	s, err := New(Config{Endpoints: []string{endpoint}, Prefix: testPrefix + "/", DialTimeout: 2 * time.Second, RequestTimeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close etcd store: %v", err)
		}
	})
	return s
}

func rawClient(t testing.TB, endpoint string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestEtcdContract(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	// 2 s: etcd's minimum lease TTL with its default election timeout.
	storetest.Run(t, 2*time.Second, func(t *testing.T) store.Store { return newEtcdStore(t, e.Endpoint(), 0) })
}

// etcd raises a TTL under its minimum (1.5 election timeouts, rounded up
// to whole seconds: 2 s by default); Acquire with ttl 1s still works.
func TestEtcdMinimumTTL(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	g, err := rawClient(t, e.Endpoint()).Grant(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd granted TTL %ds for 1s", g.TTL)
	if g.TTL < 1 {
		t.Fatalf("granted TTL %d", g.TTL)
	}
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Second)
}

func TestEtcdLayout(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), 5*time.Second)
	c := rawClient(t, e.Endpoint())

	cfg, err := c.Get(ctx, testPrefix+"/"+n.Name+"/config")
	if err != nil || len(cfg.Kvs) != 1 {
		t.Fatalf("config key: %v, %v", cfg, err)
	}
	var stored store.Network
	if err = json.Unmarshal(cfg.Kvs[0].Value, &stored); err != nil || stored != n {
		t.Fatalf("config value %s: %v", cfg.Kvs[0].Value, err)
	}
	key := testPrefix + "/" + n.Name + "/subnets/10.244.1.0-24"
	sub, err := c.Get(ctx, key)
	if err != nil || len(sub.Kvs) != 1 {
		t.Fatalf("subnet key %s: %v, %v", key, sub, err)
	}
	// A lease without attributes is stored as before they existed.
	if got, want := string(sub.Kvs[0].Value), `{"subnet":"10.244.1.0/24","host":"host1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`; got != want {
		t.Fatalf("subnet value %s; want %s", got, want)
	}
	var l store.Lease
	if err = json.Unmarshal(sub.Kvs[0].Value, &l); err != nil || l != storetest.WithoutRev([]store.Lease{h.Lease()})[0] {
		t.Fatalf("subnet value %s: %v", sub.Kvs[0].Value, err)
	}
	if h.Lease().Rev != sub.Kvs[0].ModRevision {
		t.Fatalf("lease at revision %d; the key's ModRevision is %d", h.Lease().Rev, sub.Kvs[0].ModRevision)
	}
	ttl, err := c.TimeToLive(ctx, clientv3.LeaseID(sub.Kvs[0].Lease))
	if err != nil || ttl.GrantedTTL != 5 {
		t.Fatalf("etcd lease of %s: %+v, %v; want granted TTL 5", key, ttl, err)
	}
}

// The history key of a subnet: its last holder, written with every write
// of the lease (its ModRevision the lease's last write, then the
// release's), attached to no etcd lease, and left by the release.
func TestEtcdHistoryLayout(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	c := rawClient(t, e.Endpoint())
	key := testPrefix + "/" + n.Name + "/history/10.244.1.0-24"
	history := func(what string, rev int64) {
		t.Helper()
		resp, err := c.Get(ctx, key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: history key %s: %v, %v", what, key, resp, err)
		}
		kv := resp.Kvs[0]
		if got, want := string(kv.Value), `{"subnet":"10.244.1.0/24","host":"host1"}`; got != want || kv.Lease != 0 {
			t.Fatalf("%s: history value %s, etcd lease %x; want %s and none", what, got, kv.Lease, want)
		}
		if rev != 0 && kv.ModRevision != rev {
			t.Fatalf("%s: history key at revision %d; want %d", what, kv.ModRevision, rev)
		}
	}

	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), 5*time.Second)
	history("acquired", h.Lease().Rev)
	l, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
		return a.With("x", store.Attr{Version: 1, Data: []byte("1")})
	})
	if err != nil {
		t.Fatal(err)
	}
	history("updated", l.Rev)
	if err = h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctx, testPrefix+"/"+n.Name+"/subnets/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("subnet keys after the release: %v, %v; want none", resp, err)
	}
	history("released", 0)
	if after, err := c.Get(ctx, key); err != nil || after.Kvs[0].ModRevision <= l.Rev {
		t.Fatalf("history key after the release: %v, %v; want it rewritten after revision %d", after, err, l.Rev)
	}
}

// The history is a preference: a record that does not decode does not
// stop a host from getting a subnet. One whose value is bad still says
// its subnet was held (a new host passes over it while a never-held one
// is free); one whose key is bad is passed over.
func TestEtcdCorruptHistory(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	c := rawClient(t, e.Endpoint())
	for _, kv := range [][2]string{
		{"10.244.1.0-24", `{"subnet":"10.244.6.0/24","host":"h"}`}, // another subnet's record
		{"10.244.2.0-24", `{"subnet":"10.244.2.0/24","host":""}`},  // no host
		{"10.244.3.0-24", `not json`},
		{"10.244.4.1-24", `{"subnet":"10.244.4.1/24","host":"h"}`}, // a key that is no subnet
	} {
		if _, err := c.Put(ctx, testPrefix+"/"+n.Name+"/history/"+kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	h, err := s.Acquire(ctx, n.Name, storetest.Host(1), 2*time.Second)
	if err != nil {
		t.Fatalf("Acquire with corrupt history records: %v", err)
	}
	if got := h.Lease().Subnet; got != netip.MustParsePrefix("10.244.4.0/24") {
		t.Fatalf("Acquire leased %s; want 10.244.4.0/24, the first subnet no record says was held", got)
	}
}

// A record as written before attributes existed decodes, with none; one
// whose attributes are malformed is corrupt, and the error names its key.
func TestEtcdRecords(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	c := rawClient(t, e.Endpoint())
	key := testPrefix + "/" + n.Name + "/subnets/10.244.5.0-24"
	if _, err := c.Put(ctx, key, `{"subnet":"10.244.5.0/24","host":"old","vtep":"192.0.2.50","mac":"02:00:00:00:00:50"}`); err != nil {
		t.Fatal(err)
	}
	got := storetest.Leases(t, s, n.Name)
	if len(got) != 1 || got[0].Host != "old" || !got[0].Attrs.IsZero() {
		t.Fatalf("Leases of a record without attrs = %+v", got)
	}
	if _, err := c.Put(ctx, key, `{"subnet":"10.244.5.0/24","host":"old","vtep":"192.0.2.50","mac":"02:00:00:00:00:50","attrs":{"Bad":{"version":1,"data":1}}}`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Leases(ctx, n.Name); err == nil || !strings.Contains(err.Error(), key) || !strings.Contains(err.Error(), `"Bad"`) {
		t.Fatalf("Leases with malformed attrs: err = %v; want one naming %s and the attribute", err, key)
	}
}

// A key deleted by hand, or taken over, loses the Hold at its next
// keep-alive.
func TestEtcdLostWhenKeyDeleted(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), 2*time.Second)
	if _, err := rawClient(t, e.Endpoint()).Delete(storetest.Ctx(t), testPrefix+"/"+n.Name+"/subnets/10.244.1.0-24"); err != nil {
		t.Fatal(err)
	}
	storetest.WaitClosed(t, h.Lost(), "Lost after the key was deleted")
}

func TestEtcdCorruptValue(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	key := testPrefix + "/" + n.Name + "/subnets/10.244.5.0-24"
	if _, err := rawClient(t, e.Endpoint()).Put(ctx, key, `{"subnet":"10.244.6.0/24"}`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Leases(ctx, n.Name); err == nil || !strings.Contains(err.Error(), key) {
		t.Fatalf("Leases with a corrupt value: err = %v; want one naming %s", err, key)
	}
	if _, err := s.Acquire(ctx, n.Name, storetest.Host(1), 2*time.Second); err == nil || !strings.Contains(err.Error(), key) {
		t.Fatalf("Acquire with a corrupt value: err = %v; want one naming %s", err, key)
	}
}

// With nothing listening, every call fails with store.ErrUnavailable within the
// request timeout instead of hanging; a Watch sends nothing (it has no
// snapshot to send) and still closes when its context ends.
func TestEtcdUnavailable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint := fmt.Sprintf("http://%s", l.Addr())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, endpoint, 500*time.Millisecond)
	n := storetest.Network(t)
	if _, err := s.EnsureNetwork(ctx, n); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("EnsureNetwork: err = %v; want ErrUnavailable", err)
	}
	if _, err := s.Leases(ctx, n.Name); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Leases: err = %v; want ErrUnavailable", err)
	}
	if _, err := s.Acquire(ctx, n.Name, storetest.Host(1), 2*time.Second); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Acquire: err = %v; want ErrUnavailable", err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	events := s.Watch(wctx, n.Name)
	select {
	case ev, ok := <-events:
		t.Errorf("Watch while etcd is away: %+v (open %v); want nothing", ev, ok)
	case <-time.After(storetest.Quiet):
	}
	wcancel()
	waitClosed(t, events, "the Watch channel after its context ended")

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Leases(cctx, n.Name); !errors.Is(err, context.Canceled) || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Leases with a cancelled context: err = %v; want context.Canceled, not ErrUnavailable", err)
	}
}

// etcd stopped for less than the TTL and started again on the same data:
// the Hold survives, Leases works again, and the Watch of the holder's
// connection goes on: the client resumes it where it was (nothing is
// lost, so no snapshot is needed), and a lease acquired after the
// restart is an event.
func TestEtcdRestart(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	a := newEtcdStore(t, e.Endpoint(), time.Second)
	n := storetest.Ensure(t, a, storetest.Network(t))
	const ttl = 10 * time.Second
	h := storetest.Acquire(t, a, n.Name, storetest.Host(1), ttl)
	w, _ := storetest.StartWatch(t, a, n.Name)

	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	if _, err := a.Leases(ctx, n.Name); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Leases while etcd is stopped: err = %v; want ErrUnavailable", err)
	}
	sleepCtx(ctx, 2*time.Second-time.Since(stopped))
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd was down %v", time.Since(stopped).Round(time.Millisecond))

	got := eventually(t, func() ([]store.Lease, error) { return a.Leases(ctx, n.Name) })
	if !slices.Equal(got, []store.Lease{h.Lease()}) {
		t.Fatalf("Leases after the restart = %+v; want %+v", got, h.Lease())
	}

	b := newEtcdStore(t, e.Endpoint(), time.Second)
	h2 := eventually(t, func() (store.Hold, error) { return b.Acquire(ctx, n.Name, storetest.Host(2), ttl) })
	w.WaitState("host2's lease, made after the restart", func(ls []store.Lease) bool {
		return slices.Equal(ls, []store.Lease{h.Lease(), h2.Lease()})
	})
	for _, ev := range w.Events[1:] {
		t.Logf("after the restart: reset %v, rev %d, %d leases", ev.Reset, ev.Rev, len(ev.Leases))
	}
	select {
	case <-h.Lost():
		t.Fatal("the Hold was lost across an outage shorter than its TTL")
	default:
	}
}

// etcd stopped for longer than the TTL: the client gives the lease up
// (Lost), though etcd itself, restarted, would have kept it. Acquiring
// again with the same host gets the same subnet back.
func TestEtcdLostAfterLongOutage(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), time.Second)
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), 2*time.Second)
	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	storetest.WaitClosed(t, h.Lost(), "Lost after an outage longer than the TTL")
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	want := storetest.Host(1)
	want.Subnet = h.Lease().Subnet
	again := eventually(t, func() (store.Hold, error) { return s.Acquire(ctx, n.Name, want, 2*time.Second) })
	if got := storetest.WithoutRev([]store.Lease{again.Lease(), h.Lease()}); got[0] != got[1] || again.Lease().Rev <= h.Lease().Rev {
		t.Fatalf("re-acquired %+v; want %+v", again.Lease(), h.Lease())
	}
}

// waitClosed reads ch until it is closed, at most storetest.Timeout.
func waitClosed(t *testing.T, ch <-chan store.Event, what string) {
	t.Helper()
	deadline := time.After(storetest.Timeout)
	for {
		select {
		case _, ok := <-ch:
			if !ok {
				return
			}
		case <-deadline:
			t.Fatalf("%s: still open after %v", what, storetest.Timeout)
		}
	}
}

// eventually retries fn while it fails with store.ErrUnavailable (a client
// reconnecting) and fails t on any other error or at the deadline.
func eventually[T any](t *testing.T, fn func() (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(storetest.Timeout)
	for {
		v, err := fn()
		if err == nil {
			return v
		}
		if !errors.Is(err, store.ErrUnavailable) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// BenchmarkAcquire: 200 hosts live and 200 gone, and a host that comes
// back asking for nothing (new) or for its subnet (returning).
func BenchmarkAcquire(b *testing.B) {
	for _, ask := range []bool{false, true} {
		b.Run(map[bool]string{false: "new", true: "returning"}[ask], func(b *testing.B) {
			e := startEtcd(b)
			storetest.BenchAcquire(b, newEtcdStore(b, e.Endpoint(), 0), 200, ask)
		})
	}
}
