package etcd

import (
	"context"
	"io"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

// countingKV counts the reads and transactions of one client: a test's
// view of what one store asks etcd, without a hook in the package.
type countingKV struct {
	clientv3.KV
	gets, txns atomic.Int64
}

func (c *countingKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	c.gets.Add(1)
	return c.KV.Get(ctx, key, opts...)
}

func (c *countingKV) Txn(ctx context.Context) clientv3.Txn {
	c.txns.Add(1)
	return c.KV.Txn(ctx)
}

// countReads makes s's client count its requests; call it before s is
// used.
func countReads(s store.Store) *countingKV {
	es := s.(*etcdStore)
	kv := &countingKV{KV: es.cli.KV}
	es.cli.KV = kv
	return kv
}

// A watcher reads the store once, for its snapshot, however many events
// follow.
func TestEtcdWatchNoRelist(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	writer := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, writer, storetest.Network(t))
	var holds []store.Hold
	for i := 1; i <= 5; i++ {
		holds = append(holds, storetest.Acquire(t, writer, n.Name, storetest.Host(i), time.Minute))
	}
	ws := newEtcdStore(t, e.Endpoint(), 0)
	kv := countReads(ws)
	w, _ := storetest.StartWatch(t, ws, n.Name)
	const writes = 20
	for i := range writes {
		l, err := holds[i%len(holds)].Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return a.With("n", store.Attr{Version: 1, Data: []byte{byte('0' + i%10)}})
		})
		if err != nil {
			t.Fatal(err)
		}
		w.Put("an update", l)
	}
	if g, x := kv.gets.Load(), kv.txns.Load(); g != 1 || x != 0 {
		t.Fatalf("the watcher made %d reads and %d transactions for a snapshot and %d events; want 1 read", g, x, writes)
	}
}

// A watcher cut off from etcd while etcd restarts, its leases change and
// their revisions are compacted cannot resume: it reads a new snapshot,
// which holds the changes, and watches on from there.
func TestEtcdWatchCompacted(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	direct := newEtcdStore(t, e.Endpoint(), time.Second)
	n := storetest.Ensure(t, direct, storetest.Network(t))
	const ttl = 10 * time.Second
	h1 := storetest.Acquire(t, direct, n.Name, storetest.Host(1), ttl)
	p := startProxy(t, e.Endpoint())
	w, _ := storetest.StartWatch(t, newEtcdStore(t, p.endpoint(), time.Second), n.Name)
	h2 := storetest.Acquire(t, direct, n.Name, storetest.Host(2), ttl)
	w.Put("host2's lease", h2.Lease())

	p.cut()
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	h3 := eventually(t, func() (store.Hold, error) { return direct.Acquire(ctx, n.Name, storetest.Host(3), ttl) })
	if err := h2.Release(ctx); err != nil {
		t.Fatal(err)
	}
	l1, err := h1.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
		return a.With("x", store.Attr{Version: 1, Data: []byte("1")})
	})
	if err != nil {
		t.Fatal(err)
	}
	raw := rawClient(t, e.Endpoint())
	if _, err := raw.Compact(ctx, l1.Rev); err != nil {
		t.Fatal(err)
	}
	p.mend()

	ev := w.Next("the snapshot after the gap")
	want := []store.Lease{l1, h3.Lease()}
	if !ev.Reset || !slices.Equal(ev.Leases, want) || ev.Rev < l1.Rev {
		t.Fatalf("after the gap: %+v; want a snapshot of %+v at revision %d or later", ev, want, l1.Rev)
	}
	h4 := storetest.Acquire(t, direct, n.Name, storetest.Host(4), ttl)
	w.Put("a lease after the snapshot", h4.Lease())
}

// One transaction that deletes two leases is one revision: the watcher
// folds it into a snapshot, so that each event's revision is where the
// reader is.
func TestEtcdWatchTxnFolds(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	a := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	b := storetest.Acquire(t, s, n.Name, storetest.Host(2), time.Minute)
	c := storetest.Acquire(t, s, n.Name, storetest.Host(3), time.Minute)
	w, _ := storetest.StartWatch(t, newEtcdStore(t, e.Endpoint(), 0), n.Name)
	key := func(h store.Hold) string {
		return testPrefix + "/" + n.Name + "/subnets/" + store.SubnetKey(h.Lease().Subnet, '-')
	}
	// Equivalent: etcdctl txn <<< '\n\ndel $a\ndel $b\n\n'
	resp, err := rawClient(t, e.Endpoint()).Txn(ctx).Then(clientv3.OpDelete(key(a)), clientv3.OpDelete(key(b))).Commit()
	if err != nil {
		t.Fatal(err)
	}
	ev := w.Next("the transaction")
	if !ev.Reset || ev.Rev != resp.Header.Revision || !slices.Equal(ev.Leases, []store.Lease{c.Lease()}) {
		t.Fatalf("event %+v; want a snapshot of host3's lease at revision %d", ev, resp.Header.Revision)
	}
}

// A value that does not decode holds the watch, as it fails Leases: no
// event until it is fixed, then a snapshot.
func TestEtcdWatchCorruptValue(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	w, _ := storetest.StartWatch(t, newEtcdStore(t, e.Endpoint(), 0), n.Name)
	raw := rawClient(t, e.Endpoint())
	key := testPrefix + "/" + n.Name + "/subnets/10.244.5.0-24"
	if _, err := raw.Put(ctx, key, `{"subnet":"10.244.6.0/24"}`); err != nil {
		t.Fatal(err)
	}
	w.Quiet("a corrupt value", storetest.Quiet)
	if _, err := s.Leases(ctx, n.Name); err == nil || !strings.Contains(err.Error(), key) {
		t.Fatalf("Leases with a corrupt value: %v", err)
	}
	if _, err := raw.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	ev := w.Next("the snapshot once the value is gone")
	if !ev.Reset || !slices.Equal(ev.Leases, []store.Lease{h.Lease()}) {
		t.Fatalf("event %+v; want a snapshot of %+v", ev, h.Lease())
	}
}

// BenchmarkWatchLatency spreads the writes as the file store's benchmark
// does (over its 200 ms poll), so that the figures compare.
func BenchmarkWatchLatency(b *testing.B) {
	e := startEtcd(b)
	storetest.BenchWatchLatency(b, newEtcdStore(b, e.Endpoint(), 0), newEtcdStore(b, e.Endpoint(), 0), 200*time.Millisecond)
}

// proxy forwards TCP connections to etcd until cut, which closes them
// and refuses new ones until mend: a network partition between one
// client and etcd, in the test's own namespace.
type proxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	down  bool
	conns map[net.Conn]bool
	wg    sync.WaitGroup
}

func startProxy(t *testing.T, endpoint string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: strings.TrimPrefix(endpoint, "http://"), conns: map[net.Conn]bool{}}
	p.wg.Go(p.serve)
	t.Cleanup(func() {
		l.Close()
		p.cut()
		p.wg.Wait()
	})
	return p
}

func (p *proxy) endpoint() string { return "http://" + p.l.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.forward(c) })
	}
}

func (p *proxy) forward(c net.Conn) {
	defer c.Close()
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer up.Close()
	if !p.track(c, up) {
		return
	}
	var both sync.WaitGroup
	both.Go(func() { io.Copy(up, c); up.Close() })
	both.Go(func() { io.Copy(c, up); c.Close() })
	both.Wait()
}

// track records the two ends of a forwarded connection; false when cut.
func (p *proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return false
	}
	for _, c := range cs {
		p.conns[c] = true
	}
	return true
}

func (p *proxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = true
	for c := range p.conns {
		c.Close() // the forwarder's copy ends with it
	}
	clear(p.conns)
}

func (p *proxy) mend() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = false
}
