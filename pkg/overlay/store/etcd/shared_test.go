package etcd

import (
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

// The watched range holds the shared key and every subnet key, and
// neither the config nor a history key.
func TestEtcdWatchedRange(t *testing.T) {
	t.Parallel()
	s := &etcdStore{prefix: DefaultPrefix}
	k, err := s.keys("ov1")
	if err != nil {
		t.Fatal(err)
	}
	from, end := k.watched()
	in := func(key string) bool { return from <= key && key < end }
	for _, key := range []string{k.shared, k.subnets + "10.244.0.0-24", k.subnets + "255.255.255.0-24"} {
		if !in(key) {
			t.Errorf("%s is not in the watched range [%s, %s)", key, from, end)
		}
	}
	for _, key := range []string{k.config, k.history + "10.244.0.0-24", DefaultPrefix + "/ov1", DefaultPrefix + "/ov10/shared", DefaultPrefix + "/ov1/subnets0"} {
		if in(key) {
			t.Errorf("%s is in the watched range [%s, %s)", key, from, end)
		}
	}
}

// The shared record is one key, without an etcd lease, its value the
// store's encoding, its ModRevision the record's Rev; not a lease.
func TestEtcdSharedLayout(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	sh := storetest.UpdateShared(t, s, n.Name, func(a store.Attrs) (store.Attrs, error) {
		return a.With("esp.ring", store.Attr{Version: 1, Data: []byte(`{"epoch":1}`)})
	})
	key := testPrefix + "/" + n.Name + "/shared"
	resp, err := rawClient(t, e.Endpoint()).Get(ctx, key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("shared key %s: %v, %v", key, resp, err)
	}
	kv := resp.Kvs[0]
	if got, want := string(kv.Value), `{"attrs":{"esp.ring":{"version":1,"data":{"epoch":1}}}}`; got != want {
		t.Errorf("shared value %s; want %s", got, want)
	}
	if kv.ModRevision != sh.Rev || kv.Lease != 0 {
		t.Errorf("shared key at revision %d, etcd lease %x; want the record's revision %d and no etcd lease", kv.ModRevision, kv.Lease, sh.Rev)
	}
	if got := storetest.Leases(t, s, n.Name); !slices.Equal(got, []store.Lease{h.Lease()}) {
		t.Errorf("Leases = %+v; want host1's only", got)
	}
}

// A key in the watched range that is not berth's is passed over: no
// event, no new snapshot. A shared record deleted by hand is the zero
// Shared, as an event.
func TestEtcdWatchSharedByHand(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	sh := storetest.UpdateShared(t, s, n.Name, func(a store.Attrs) (store.Attrs, error) {
		return a.With("esp.ring", store.Attr{Version: 1, Data: []byte(`1`)})
	})
	w, snap := storetest.StartWatch(t, newEtcdStore(t, e.Endpoint(), 0), n.Name)
	if *snap.Shared != sh {
		t.Fatalf("snapshot's shared record %+v; want %+v", *snap.Shared, sh)
	}
	raw := rawClient(t, e.Endpoint())
	if _, err := raw.Put(ctx, testPrefix+"/"+n.Name+"/sharedx", "not berth's"); err != nil {
		t.Fatal(err)
	}
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	w.Put("the lease after a key not berth's", h.Lease())

	del, err := raw.Delete(ctx, testPrefix+"/"+n.Name+"/shared")
	if err != nil {
		t.Fatal(err)
	}
	ev := w.Change("the deletion by hand")
	if ev.Shared == nil || *ev.Shared != (store.Shared{}) || ev.Rev != del.Header.Revision {
		t.Fatalf("event %+v; want the zero Shared at revision %d", ev, del.Header.Revision)
	}
	// Written again: the compare-and-swap on a key that is gone.
	again := storetest.UpdateShared(t, s, n.Name, func(a store.Attrs) (store.Attrs, error) {
		if !a.IsZero() {
			t.Errorf("fn given %v for a deleted record", a)
		}
		return a.With("esp.ring", store.Attr{Version: 1, Data: []byte(`2`)})
	})
	w.PutShared("the record written again", again)
}

// A shared value that does not decode fails Shared and UpdateShared
// (before fn, which would drop attributes it cannot see), naming the
// key; it holds the watch as a corrupt lease does, until it is fixed.
func TestEtcdSharedCorrupt(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	w, _ := storetest.StartWatch(t, newEtcdStore(t, e.Endpoint(), 0), n.Name)
	key := testPrefix + "/" + n.Name + "/shared"
	raw := rawClient(t, e.Endpoint())
	if _, err := raw.Put(ctx, key, `{"attrs":{"Bad":{"version":1,"data":1}}}`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Shared(ctx, n.Name); err == nil || !strings.Contains(err.Error(), key) {
		t.Errorf("Shared of a corrupt record: %v; want an error naming %s", err, key)
	}
	called := false
	if _, err := s.UpdateShared(ctx, n.Name, func(a store.Attrs) (store.Attrs, error) { called = true; return a, nil }); err == nil || called {
		t.Errorf("UpdateShared of a corrupt record: %v, fn called %v; want an error before fn", err, called)
	}
	w.Quiet("a corrupt shared record", storetest.Quiet)
	fixed, err := raw.Put(ctx, key, `{}`)
	if err != nil {
		t.Fatal(err)
	}
	ev := w.Next("the snapshot once the record is fixed")
	if !ev.Reset || *ev.Shared != (store.Shared{Rev: fixed.Header.Revision}) {
		t.Fatalf("event %+v; want a snapshot with an empty record at revision %d", ev, fixed.Header.Revision)
	}
}

// A transaction that writes the shared record and a lease is one
// revision: folded into a snapshot that carries both.
func TestEtcdWatchSharedTxnFolds(t *testing.T) {
	t.Parallel()
	e := startEtcd(t)
	ctx := storetest.Ctx(t)
	s := newEtcdStore(t, e.Endpoint(), 0)
	n := storetest.Ensure(t, s, storetest.Network(t))
	a := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	w, _ := storetest.StartWatch(t, newEtcdStore(t, e.Endpoint(), 0), n.Name)
	base := testPrefix + "/" + n.Name
	// Equivalent: etcdctl txn <<< '\n\nput $base/shared {}\ndel $subnet\n\n'
	resp, err := rawClient(t, e.Endpoint()).Txn(ctx).Then(
		clientv3.OpPut(base+"/shared", `{}`),
		clientv3.OpDelete(base+"/subnets/"+store.SubnetKey(a.Lease().Subnet, '-')),
	).Commit()
	if err != nil {
		t.Fatal(err)
	}
	ev := w.Next("the transaction")
	if !ev.Reset || ev.Rev != resp.Header.Revision || len(ev.Leases) != 0 || *ev.Shared != (store.Shared{Rev: resp.Header.Revision}) {
		t.Fatalf("event %+v; want a snapshot of no lease and the empty record at revision %d", ev, resp.Header.Revision)
	}
}
