package storetest

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// ring is a feature's network-wide attribute, as the encrypted overlay
// defines its key ring.
type ring struct {
	Epoch int    `json:"epoch"`
	Key   string `json:"key"`
}

var ringAttr = store.Attribute[ring]{Name: "esp.ring", Version: 1}

// setRing returns an UpdateShared fn that sets the ring to r.
func setRing(r ring) func(store.Attrs) (store.Attrs, error) {
	return func(a store.Attrs) (store.Attrs, error) { return ringAttr.Set(a, r) }
}

// setAttr returns an UpdateShared fn that sets the attribute name to data.
func setAttr(name, data string) func(store.Attrs) (store.Attrs, error) {
	return func(a store.Attrs) (store.Attrs, error) {
		return a.With(name, store.Attr{Version: 1, Data: []byte(data)})
	}
}

// SharedOf reads network's shared record on s and fails t on an error.
func SharedOf(t testing.TB, s store.Store, network string) store.Shared {
	t.Helper()
	sh, err := s.Shared(Ctx(t), network)
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// UpdateShared updates network's shared record on s with fn and fails t
// on an error.
func UpdateShared(t testing.TB, s store.Store, network string, fn func(store.Attrs) (store.Attrs, error)) store.Shared {
	t.Helper()
	sh, err := s.UpdateShared(Ctx(t), network, fn)
	if err != nil {
		t.Fatal(err)
	}
	return sh
}

// runShared is the part of the contract about the network's shared
// record: a record never written reads as the zero Shared; an update is
// a compare-and-swap that loses no other host's update; one that changes
// nothing, fails or is over the bound writes nothing; the record is in
// every snapshot, and its writes are events ordered with the leases',
// never a lease.
func runShared(t *testing.T, ttl time.Duration, newStore func(t *testing.T) store.Store) {
	t.Run("SharedNeverWritten", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		s := newStore(t)
		n := Network(t)
		if got := SharedOf(t, s, n.Name); got != (store.Shared{}) {
			t.Fatalf("shared record of a network not stored: %+v; want the zero Shared", got)
		}
		called := false
		_, err := s.UpdateShared(ctx, n.Name, func(a store.Attrs) (store.Attrs, error) {
			called = true
			return ringAttr.Set(a, ring{Epoch: 1})
		})
		if err == nil || !strings.Contains(err.Error(), "EnsureNetwork") || called {
			t.Fatalf("UpdateShared on a network without config: err = %v, fn called %v; want one saying to EnsureNetwork first, fn not called", err, called)
		}
		Ensure(t, s, n)
		if got := SharedOf(t, newStore(t), n.Name); got != (store.Shared{}) {
			t.Fatalf("shared record never written: %+v; want the zero Shared", got)
		}
		if _, err := s.Shared(ctx, "a/b"); err == nil {
			t.Error(`Shared of network "a/b": no error`)
		}
		if _, err := s.UpdateShared(ctx, "../x", setRing(ring{})); err == nil {
			t.Error(`UpdateShared of network "../x": no error`)
		}
	})

	t.Run("SharedUpdate", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		s1, s2 := newStore(t), newStore(t)
		first := UpdateShared(t, s1, n.Name, setRing(ring{Epoch: 1, Key: "k1"}))
		if r, ok, err := ringAttr.Get(first.Attrs); first.Rev <= 0 || err != nil || !ok || r != (ring{Epoch: 1, Key: "k1"}) {
			t.Fatalf("first write %+v (ring %+v, %v, %v); want the ring at a revision above 0", first, r, ok, err)
		}
		if got := SharedOf(t, s2, n.Name); got != first {
			t.Fatalf("read on another connection: %+v; want %+v", got, first)
		}

		// The revisions are the network's: a lease written after the
		// record is after it, and a write of the record after the lease.
		h := Acquire(t, newStore(t), n.Name, Host(1), ttl)
		if h.Lease().Rev <= first.Rev {
			t.Fatalf("lease written at revision %d after the shared record's %d", h.Lease().Rev, first.Rev)
		}
		second := UpdateShared(t, s2, n.Name, func(a store.Attrs) (store.Attrs, error) {
			if a != first.Attrs {
				return a, fmt.Errorf("fn given %v; want the stored %v", a, first.Attrs)
			}
			return a.With("mesh", store.Attr{Version: 2, Data: []byte(` {"ingress": [80]} `)})
		})
		if second.Rev <= h.Lease().Rev || !slices.Equal(second.Attrs.Names(), []string{"esp.ring", "mesh"}) {
			t.Fatalf("second write %+v; want esp.ring and mesh, after the lease's revision %d", second, h.Lease().Rev)
		}
		if mesh, _ := second.Attrs.Get("mesh"); mesh.Version != 2 || string(mesh.Data) != `{"ingress":[80]}` {
			t.Fatalf("mesh as written: %+v; want version 2, compacted", mesh)
		}

		// fn returning its argument writes nothing.
		if got, err := s1.UpdateShared(ctx, n.Name, func(a store.Attrs) (store.Attrs, error) { return a, nil }); err != nil || got != second {
			t.Fatalf("UpdateShared with no change = %+v, %v; want %+v", got, err, second)
		}
		// fn's error comes back as it is, with nothing written.
		refused := errors.New("the feature refused")
		if _, err := s1.UpdateShared(ctx, n.Name, func(a store.Attrs) (store.Attrs, error) { return ringAttr.Delete(a), refused }); !errors.Is(err, refused) {
			t.Fatalf("UpdateShared with a failing fn: %v; want its error", err)
		}
		// A result over the bound is refused, with nothing written.
		big := `"` + strings.Repeat("x", store.MaxAttrsSize) + `"`
		if _, err := s1.UpdateShared(ctx, n.Name, setAttr("big", big)); !errors.Is(err, store.ErrAttrsTooLarge) {
			t.Fatalf("UpdateShared over the size bound: %v; want ErrAttrsTooLarge", err)
		}
		half := `"` + strings.Repeat("x", store.MaxAttrsSize/2) + `"`
		withHalf := UpdateShared(t, s1, n.Name, setAttr("half.a", half))
		if _, err := s2.UpdateShared(ctx, n.Name, setAttr("half.b", half)); !errors.Is(err, store.ErrAttrsTooLarge) || !strings.Contains(err.Error(), "64 KiB") {
			t.Fatalf("UpdateShared with two halves: %v; want ErrAttrsTooLarge naming 64 KiB", err)
		}
		for i, c := range []store.Store{s1, s2, newStore(t)} {
			if got := SharedOf(t, c, n.Name); got != withHalf {
				t.Fatalf("after the updates that wrote nothing, connection %d reads %+v; want %+v", i+1, got, withHalf)
			}
		}

		// A record of no attributes is still a record written.
		empty := UpdateShared(t, s2, n.Name, func(store.Attrs) (store.Attrs, error) { return store.Attrs{}, nil })
		if !empty.Attrs.IsZero() || empty.Rev <= withHalf.Rev {
			t.Fatalf("record emptied: %+v; want no attributes at a revision after %d", empty, withHalf.Rev)
		}
		if got := SharedOf(t, s1, n.Name); got != empty {
			t.Fatalf("emptied record read back as %+v; want %+v", got, empty)
		}

		// None of it is a lease.
		if got := Leases(t, newStore(t), n.Name); !slices.Equal(got, []store.Lease{h.Lease()}) {
			t.Fatalf("Leases = %+v; want host1's lease only", got)
		}
	})

	// Another host writes between the read that fn is given and the
	// write: the compare-and-swap fails, and fn is called again on the
	// newer record, so both writes stick.
	t.Run("SharedWriteInBetween", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		a, b := newStore(t), newStore(t)
		UpdateShared(t, a, n.Name, setRing(ring{Epoch: 1}))
		var given []store.Attrs
		var theirs store.Shared
		mine := UpdateShared(t, a, n.Name, func(at store.Attrs) (store.Attrs, error) {
			given = append(given, at)
			if len(given) == 1 {
				theirs = UpdateShared(t, b, n.Name, setAttr("mesh", `{"ingress":[443]}`))
			}
			return at.With("other", store.Attr{Version: 1, Data: []byte(`true`)})
		})
		if len(given) != 2 || given[1] != theirs.Attrs {
			t.Fatalf("fn called %d times, given %v; want twice, the second time with the other host's %v", len(given), given, theirs.Attrs)
		}
		if mine.Rev <= theirs.Rev || !slices.Equal(mine.Attrs.Names(), []string{"esp.ring", "mesh", "other"}) {
			t.Fatalf("written %+v; want every attribute, after the other host's revision %d", mine, theirs.Rev)
		}
		if got := SharedOf(t, b, n.Name); got != mine {
			t.Fatalf("read back %+v; want %+v", got, mine)
		}
	})

	// Hosts updating the record at once, each its own attribute, several
	// times: no update is lost, and a watcher ends with the record as
	// stored.
	t.Run("SharedConcurrent", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		w, _ := StartWatch(t, newStore(t), n.Name)
		const hosts, rounds = 6, 4
		stores := make([]store.Store, hosts)
		for i := range stores {
			stores[i] = newStore(t)
		}
		var calls atomic.Int64
		var wg sync.WaitGroup
		for i, s := range stores {
			wg.Go(func() {
				for r := range rounds {
					_, err := s.UpdateShared(ctx, n.Name, func(a store.Attrs) (store.Attrs, error) {
						calls.Add(1)
						return a.With(fmt.Sprintf("host%d", i+1), store.Attr{Version: 1, Data: []byte(strconv.Itoa(r))})
					})
					if err != nil {
						t.Errorf("host%d round %d: %v", i+1, r, err)
					}
				}
			})
		}
		wg.Wait()
		t.Logf("%d updates, %d calls of fn", hosts*rounds, calls.Load())
		got := SharedOf(t, newStore(t), n.Name)
		if got.Attrs.Len() != hosts {
			t.Fatalf("after the concurrent updates the record holds %v; want one attribute per host", got.Attrs)
		}
		for i := range hosts {
			if a, ok := got.Attrs.Get(fmt.Sprintf("host%d", i+1)); !ok || string(a.Data) != strconv.Itoa(rounds-1) {
				t.Errorf("host%d's attribute: %+v, %v; want its last round, %d", i+1, a, ok, rounds-1)
			}
		}
		w.WaitShared("the concurrent updates", func(sh store.Shared) bool { return sh == got })
		if ls := Leases(t, newStore(t), n.Name); len(ls) != 0 || len(w.State()) != 0 {
			t.Fatalf("after updates of the shared record Leases = %+v, the watch holds %+v; want no lease", ls, w.State())
		}
	})

	t.Run("SharedWatch", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		s1 := newStore(t)
		h1 := Acquire(t, s1, n.Name, Host(1), ttl)
		rec := UpdateShared(t, newStore(t), n.Name, setRing(ring{Epoch: 1, Key: "k1"}))
		w1, snap := StartWatch(t, s1, n.Name)
		w2, _ := StartWatch(t, newStore(t), n.Name)
		if snap.Shared == nil || *snap.Shared != rec || !slices.Equal(snap.Leases, []store.Lease{h1.Lease()}) || snap.Rev < rec.Rev {
			t.Fatalf("snapshot %+v; want host1's lease and the shared record %+v", snap, rec)
		}

		// A lease write, a write of the record and a lease write, each
		// from another connection: three events, in that order, at
		// increasing revisions (the Watcher checks), read one by one (a
		// file store's watcher that finds a lease file rewritten since
		// the counter it read may pass over its earlier write).
		other := newStore(t)
		h2 := Acquire(t, other, n.Name, Host(2), ttl)
		for _, w := range []*Watcher{w1, w2} {
			w.Put("host2's acquisition", h2.Lease())
		}
		rec2 := UpdateShared(t, other, n.Name, setRing(ring{Epoch: 2, Key: "k2"}))
		for _, w := range []*Watcher{w1, w2} {
			w.PutShared("the record's write", rec2)
		}
		after, err := h2.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return ackAttr.Set(a, ack{Seen: []string{"host1"}})
		})
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range []*Watcher{w1, w2} {
			w.Put("host2's attributes", after)
		}
		// A write that changes nothing is no event.
		UpdateShared(t, other, n.Name, func(a store.Attrs) (store.Attrs, error) { return a, nil })
		w1.Quiet("an update of the record that changed nothing", Quiet)
		c1, c2 := w1.changes(), w2.changes()
		if !eventsEqual(c1, c2) {
			t.Fatalf("watcher 1 saw:\n%s\nwatcher 2:\n%s\nwant the same", formatEvents(c1), formatEvents(c2))
		}
		if got := Leases(t, newStore(t), n.Name); !slices.Equal(got, w1.State()) || !slices.Equal(got, []store.Lease{h1.Lease(), after}) {
			t.Fatalf("Leases = %+v; the watch holds %+v; want host1's and host2's, nothing else", got, w1.State())
		}
		if got := SharedOf(t, newStore(t), n.Name); got != w1.Shared() || got != rec2 {
			t.Fatalf("Shared = %+v; the watch holds %+v; want %+v", got, w1.Shared(), rec2)
		}
	})

	// A watch of a network whose record was never written carries the
	// zero Shared, and sees the first write.
	t.Run("SharedWatchFirstWrite", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		w, snap := StartWatch(t, newStore(t), n.Name)
		if snap.Shared == nil || *snap.Shared != (store.Shared{}) {
			t.Fatalf("snapshot of a record never written: %+v; want the zero Shared", snap.Shared)
		}
		rec := UpdateShared(t, newStore(t), n.Name, setRing(ring{Epoch: 1}))
		w.PutShared("the first write", rec)
	})
}
