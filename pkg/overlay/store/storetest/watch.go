package storetest

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// Quiet is how long a test waits to see that no event comes: long enough
// for a few polls of a polling backend, and for renewals at a TTL of a
// second or two.
const Quiet = 2 * time.Second

// Watcher reads a Watch the way a caller does, keeping the leases and
// the shared record its events add up to, and checks each event against
// the contract as it comes: a snapshot first; a change's revision above
// the last event's, a snapshot's not below it; a written lease's Rev that
// of its event, a deleted one's before it, and deleted only once;
// snapshot leases sorted and no newer than the snapshot; a snapshot's
// shared record there and no newer than it; a change of the shared record
// carrying no lease, its Rev that of its event.
type Watcher struct {
	t      testing.TB
	ch     <-chan store.Event
	rev    int64
	state  map[netip.Prefix]store.Lease
	shared store.Shared
	Events []store.Event // every event read, the snapshot first
}

// StartWatch watches network on s until t ends and reads the first
// snapshot.
func StartWatch(t testing.TB, s store.Store, network string) (*Watcher, store.Event) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := &Watcher{t: t, ch: s.Watch(ctx, network)}
	first := w.Next("the first snapshot")
	if !first.Reset {
		t.Fatalf("first event %+v; want a snapshot", first)
	}
	return w, first
}

// Next reads one event, checks it and applies it to the leases.
func (w *Watcher) Next(what string) store.Event {
	w.t.Helper()
	select {
	case ev, ok := <-w.ch:
		if !ok {
			w.t.Fatalf("waiting for %s: Watch channel closed", what)
		}
		w.check(what, ev)
		return ev
	case <-time.After(Timeout):
		w.t.Fatalf("no event for %s within %v (the watch is at revision %d)", what, Timeout, w.rev)
	}
	panic("unreachable")
}

func (w *Watcher) check(what string, ev store.Event) {
	w.t.Helper()
	w.Events = append(w.Events, ev)
	if w.state == nil && !ev.Reset {
		w.t.Fatalf("%s: first event %+v is no snapshot", what, ev)
	}
	if ev.Reset {
		if ev.Rev < w.rev {
			w.t.Fatalf("%s: snapshot at revision %d after an event at %d", what, ev.Rev, w.rev)
		}
		if ev.Shared == nil {
			w.t.Fatalf("%s: snapshot at revision %d without the shared record", what, ev.Rev)
		}
		if ev.Shared.Rev > ev.Rev || ev.Shared.Rev < 0 || ev.Shared.Rev == 0 && !ev.Shared.Attrs.IsZero() {
			w.t.Fatalf("%s: snapshot at revision %d holds the shared record %+v", what, ev.Rev, *ev.Shared)
		}
		w.shared = *ev.Shared
		w.state = map[netip.Prefix]store.Lease{}
		for i, l := range ev.Leases {
			if i > 0 && ev.Leases[i-1].Subnet.Compare(l.Subnet) >= 0 {
				w.t.Fatalf("%s: snapshot leases not sorted by subnet, or a subnet twice: %+v", what, ev.Leases)
			}
			if l.Rev > ev.Rev {
				w.t.Fatalf("%s: snapshot at revision %d holds %+v, written later", what, ev.Rev, l)
			}
			w.state[l.Subnet] = l
		}
		w.rev = ev.Rev
		return
	}
	if ev.Rev <= w.rev {
		w.t.Fatalf("%s: event %+v at revision %d, not after the last event's %d", what, ev, ev.Rev, w.rev)
	}
	if ev.Shared != nil {
		if ev.Lease != (store.Lease{}) || ev.Deleted || ev.Leases != nil {
			w.t.Fatalf("%s: a change of the shared record that carries a lease too: %+v", what, ev)
		}
		// Written at the event's revision, or removed (by hand).
		if ev.Shared.Rev != ev.Rev && *ev.Shared != (store.Shared{}) {
			w.t.Fatalf("%s: shared record written at revision %d in an event at %d", what, ev.Shared.Rev, ev.Rev)
		}
		w.shared = *ev.Shared
		w.rev = ev.Rev
		return
	}
	if err := ev.Lease.Validate(); err != nil {
		w.t.Fatalf("%s: event with an invalid lease: %v", what, err)
	}
	if ev.Deleted {
		if ev.Lease.Rev >= ev.Rev {
			w.t.Fatalf("%s: deletion at revision %d of a lease written at %d", what, ev.Rev, ev.Lease.Rev)
		}
		if _, ok := w.state[ev.Lease.Subnet]; !ok {
			w.t.Fatalf("%s: deletion of %s, which the watch did not hold: %+v", what, ev.Lease.Subnet, ev)
		}
		delete(w.state, ev.Lease.Subnet)
	} else {
		if ev.Lease.Rev != ev.Rev {
			w.t.Fatalf("%s: lease written at revision %d in an event at %d", what, ev.Lease.Rev, ev.Rev)
		}
		w.state[ev.Lease.Subnet] = ev.Lease
	}
	w.rev = ev.Rev
}

// Change reads one event and fails the test if it is a snapshot.
func (w *Watcher) Change(what string) store.Event {
	w.t.Helper()
	ev := w.Next(what)
	if ev.Reset {
		w.t.Fatalf("%s: a snapshot %+v; want one change", what, ev)
	}
	return ev
}

// Put reads one event and fails the test unless it is the write of want.
func (w *Watcher) Put(what string, want store.Lease) {
	w.t.Helper()
	if ev := w.Change(what); ev.Deleted || ev.Shared != nil || ev.Lease != want {
		w.t.Fatalf("%s: event %+v; want the write of %+v", what, ev, want)
	}
}

// PutShared reads one event and fails the test unless it is the write of
// the shared record want.
func (w *Watcher) PutShared(what string, want store.Shared) {
	w.t.Helper()
	if ev := w.Change(what); ev.Shared == nil || *ev.Shared != want {
		w.t.Fatalf("%s: event %+v; want the write of the shared record %+v", what, ev, want)
	}
}

// Deleted reads one event and fails the test unless it is the deletion
// of was, as it was.
func (w *Watcher) Deleted(what string, was store.Lease) {
	w.t.Helper()
	if ev := w.Change(what); !ev.Deleted || ev.Shared != nil || ev.Lease != was {
		w.t.Fatalf("%s: event %+v; want the deletion of %+v", what, ev, was)
	}
}

// Quiet fails the test if an event comes within d.
func (w *Watcher) Quiet(what string, d time.Duration) {
	w.t.Helper()
	select {
	case ev, ok := <-w.ch:
		w.t.Fatalf("%s: event %+v (open %v); want none for %v", what, ev, ok, d)
	case <-time.After(d):
	}
}

// Drain reads, checks and applies the events that are there without
// waiting, and returns how many.
func (w *Watcher) Drain() int {
	w.t.Helper()
	for n := 0; ; n++ {
		select {
		case ev, ok := <-w.ch:
			if !ok {
				w.t.Fatal("Watch channel closed")
			}
			w.check("draining", ev)
		default:
			return n
		}
	}
}

// State is the leases the events read add up to, sorted by subnet.
func (w *Watcher) State() []store.Lease {
	ls := make([]store.Lease, 0, len(w.state))
	for _, l := range w.state {
		ls = append(ls, l)
	}
	store.SortLeases(ls)
	return ls
}

// Shared is the shared record the events read add up to.
func (w *Watcher) Shared() store.Shared { return w.shared }

// WaitShared reads events until the shared record they add up to
// satisfies ok.
func (w *Watcher) WaitShared(what string, ok func(store.Shared) bool) {
	w.t.Helper()
	for !ok(w.shared) {
		w.Next(what)
	}
}

// WaitState reads events until the leases they add up to satisfy ok.
func (w *Watcher) WaitState(what string, ok func([]store.Lease) bool) {
	w.t.Helper()
	for !ok(w.State()) {
		w.Next(what)
	}
}

// WaitClosed reads events until the channel is closed.
func (w *Watcher) WaitClosed(what string) {
	w.t.Helper()
	deadline := time.After(Timeout)
	for {
		select {
		case _, ok := <-w.ch:
			if !ok {
				return
			}
		case <-deadline:
			w.t.Fatalf("%s: Watch channel still open after %v", what, Timeout)
		}
	}
}

// changes are the events after the first snapshot.
func (w *Watcher) changes() []store.Event { return w.Events[1:] }

// runWatch is the part of the contract about Watch.
func runWatch(t *testing.T, ttl time.Duration, newStore func(t *testing.T) store.Store) {
	// Each write is one event, carrying the lease as written (its Rev
	// the event's); a release one deletion, carrying the lease as it was;
	// a renewal none. The watch is host1's own connection, as an agent's
	// is, and sees another host's writes there.
	t.Run("WatchSnapshotThenEvents", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		s1 := newStore(t)
		h1 := Acquire(t, s1, n.Name, WithAttr(t, Host(1), "mesh", 1, `{"ports":[80]}`), ttl)
		w, snap := StartWatch(t, s1, n.Name)
		if !slices.Equal(snap.Leases, []store.Lease{h1.Lease()}) || snap.Rev < h1.Lease().Rev {
			t.Fatalf("snapshot %+v; want host1's lease %+v, at its revision or later", snap, h1.Lease())
		}

		h2 := Acquire(t, newStore(t), n.Name, Host(2), ttl)
		w.Put("host2's acquisition", h2.Lease())
		after, err := h2.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return ackAttr.Set(a, ack{Seen: []string{"host1"}})
		})
		if err != nil {
			t.Fatal(err)
		}
		w.Put("host2's attributes", after)
		if _, err := h2.Update(ctx, func(a store.Attrs) (store.Attrs, error) { return a, nil }); err != nil {
			t.Fatal(err)
		}
		was := h1.Lease()
		if err := h1.Release(ctx); err != nil {
			t.Fatal(err)
		}
		w.Deleted("host1's release", was)
		// Renewals of host2's lease (every ttl/3) and the update that
		// changed nothing are no events.
		w.Quiet("renewals", max(Quiet, 2*ttl))
		if got := Leases(t, newStore(t), n.Name); !slices.Equal(got, w.State()) || !slices.Equal(got, []store.Lease{h2.Lease()}) {
			t.Fatalf("Leases = %+v; the watch holds %+v; want %+v", got, w.State(), h2.Lease())
		}
	})

	// A restarted agent taking over its host's live lease writes it: one
	// event, the lease with its new values.
	t.Run("WatchTakeover", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		old := Acquire(t, newStore(t), n.Name, Host(1), ttl)
		w, _ := StartWatch(t, newStore(t), n.Name)
		again := Host(1)
		again.VTEP = netip.MustParseAddr("192.0.2.99")
		h := Acquire(t, newStore(t), n.Name, again, ttl)
		w.Put("the takeover", h.Lease())
		WaitClosed(t, old.Lost(), "the old incarnation's Lost")
		w.Quiet("after the takeover", Quiet)
	})

	// A holder that stops without releasing: its lease outlives it by the
	// TTL, then expires. The expiry is one deletion, and only one: not
	// again when a sweep (Leases) or another host's acquisition finds it
	// expired. Its subnet is free again: another host that asks for it
	// gets it.
	t.Run("WatchExpiry", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		gone := newStore(t)
		h := Acquire(t, gone, n.Name, Host(1), ttl)
		w, _ := StartWatch(t, newStore(t), n.Name)
		if err := gone.Close(); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		w.Deleted("the expiry", h.Lease())
		t.Logf("expiry seen %v after the holder closed (ttl %v)", time.Since(start).Round(time.Millisecond), ttl)
		select {
		case <-h.Lost():
			t.Fatal("Lost closed by Close; a Hold of a closed store is not lost, only no longer renewed")
		default:
		}
		if got := Leases(t, newStore(t), n.Name); len(got) != 0 {
			t.Fatalf("Leases after the expiry = %+v", got)
		}
		w.Quiet("after the expiry", Quiet)
		want := Host(2)
		want.Subnet = h.Lease().Subnet
		h2 := Acquire(t, newStore(t), n.Name, want, ttl)
		if h2.Lease().Subnet != h.Lease().Subnet {
			t.Fatalf("after the expiry host2 got %s; want the freed %s", h2.Lease().Subnet, h.Lease().Subnet)
		}
		w.Put("host2 on the freed subnet", h2.Lease())
	})

	// A lease that comes and goes, on the same subnet again and again:
	// once the watch holds it, its release is a deletion, of the lease as
	// the watch holds it. One that comes and goes before the watch reads
	// it may be no event at all, but never a write without its deletion:
	// once the watch holds a lease (on another subnet) written after it,
	// it holds nothing else. Repeated, since the window is one poll (file)
	// or one event (etcd).
	t.Run("WatchLeaseComesAndGoes", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		w, _ := StartWatch(t, newStore(t), n.Name)
		other := newStore(t)
		later := Host(3)
		later.Subnet = netip.MustParsePrefix("10.244.9.0/24")
		for i := range 5 {
			h := Acquire(t, other, n.Name, Host(2), ttl)
			w.Put(fmt.Sprintf("round %d: the acquisition", i), h.Lease())
			was := h.Lease()
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
			w.Deleted(fmt.Sprintf("round %d: the release", i), was)
		}
		for i := range 5 {
			h := Acquire(t, other, n.Name, Host(2), ttl)
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
			after := Acquire(t, other, n.Name, later, ttl)
			if after.Lease().Subnet == h.Lease().Subnet {
				t.Fatalf("round %d: both leases on %s; the test needs two subnets", i, h.Lease().Subnet)
			}
			w.WaitState(fmt.Sprintf("round %d: the lease after", i), func(ls []store.Lease) bool { return slices.Contains(ls, after.Lease()) })
			if got := w.State(); !slices.Equal(got, []store.Lease{after.Lease()}) {
				t.Fatalf("round %d: the watch holds %+v; want only %+v, written after %+v went", i, got, after.Lease(), h.Lease())
			}
			was := after.Lease()
			if err := after.Release(ctx); err != nil {
				t.Fatal(err)
			}
			w.Deleted(fmt.Sprintf("round %d: the release of the lease after", i), was)
		}
	})

	// Two watchers of one network see the same changes in the same order.
	t.Run("WatchSecondWatcher", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		w1, _ := StartWatch(t, newStore(t), n.Name)
		w2, _ := StartWatch(t, newStore(t), n.Name)
		s := newStore(t)
		// Writes in a burst, one per lease file, then their deletions in
		// a burst: each a change of its own however late a watcher reads.
		const hosts = 6
		var holds []store.Hold
		for i := 1; i <= hosts; i++ {
			holds = append(holds, Acquire(t, s, n.Name, Host(i), ttl))
		}
		for _, w := range []*Watcher{w1, w2} {
			w.WaitState("the acquisitions", func(ls []store.Lease) bool { return len(ls) == hosts })
		}
		for _, h := range holds {
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for _, w := range []*Watcher{w1, w2} {
			w.WaitState("the releases", func(ls []store.Lease) bool { return len(ls) == 0 })
		}
		c1, c2 := w1.changes(), w2.changes()
		if len(c1) != 2*hosts || !eventsEqual(c1, c2) {
			t.Fatalf("watcher 1 saw %d changes:\n%s\nwatcher 2:\n%s\nwant the same %d", len(c1), formatEvents(c1), formatEvents(c2), 2*hosts)
		}
		for i, h := range holds {
			if c1[i].Deleted || c1[i].Lease != h.Lease() {
				t.Fatalf("change %d is %+v; want the acquisition of %+v", i, c1[i], h.Lease())
			}
		}
	})

	// Hosts writing at once (acquisitions racing for subnets, updates,
	// releases), read by watchers at their own pace: every event keeps
	// the contract, and each watcher ends with the leases Leases lists.
	t.Run("WatchConcurrentWriters", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		watchers := []*Watcher{}
		for range 2 {
			w, _ := StartWatch(t, newStore(t), n.Name)
			watchers = append(watchers, w)
		}
		const writers = 4
		stores := make([]store.Store, writers)
		for i := range stores {
			stores[i] = newStore(t)
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			var wg sync.WaitGroup
			for i, s := range stores {
				// A long TTL: expiry is not the point here, and under load
				// (-race, two CPUs) renewals queueing for the file store's
				// lock behind the churn can miss a TTL of a second.
				wg.Go(func() { churn(ctx, t, s, n.Name, Host(i+1), time.Minute, stop) })
			}
			wg.Wait()
		}()
		time.AfterFunc(2*time.Second, func() { close(stop) })
		events := 0
	read:
		for {
			for _, w := range watchers {
				events += w.Drain()
			}
			select {
			case <-done:
				break read
			case <-time.After(10 * time.Millisecond):
			}
		}
		want := Leases(t, newStore(t), n.Name)
		if len(want) != writers {
			t.Fatalf("after the churn Leases = %+v; want one lease per writer", want)
		}
		for i, w := range watchers {
			w.WaitState(fmt.Sprintf("watcher %d converging", i+1), func(ls []store.Lease) bool { return slices.Equal(ls, want) })
			resets := 0
			for _, ev := range w.Events[1:] {
				if ev.Reset {
					resets++
				}
			}
			t.Logf("watcher %d: %d events, %d of them snapshots after the first", i+1, len(w.Events)-1, resets)
		}
	})

	// A watch of a network with nothing stored yet starts empty and sees
	// the first lease.
	t.Run("WatchBeforeNetwork", func(t *testing.T) {
		t.Parallel()
		n := Network(t)
		w, snap := StartWatch(t, newStore(t), n.Name)
		if len(snap.Leases) != 0 {
			t.Fatalf("snapshot of a network not stored %+v", snap)
		}
		Ensure(t, newStore(t), n)
		h := Acquire(t, newStore(t), n.Name, Host(1), ttl)
		w.Put("the first lease", h.Lease())
	})

	t.Run("WatchCloses", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		ctx, cancel := context.WithCancel(Ctx(t))
		w := &Watcher{t: t, ch: newStore(t).Watch(ctx, n.Name)}
		w.Next("the snapshot")
		cancel()
		w.WaitClosed("after its context ended")

		// Also when the context ends before the snapshot is read.
		ctx, cancel = context.WithCancel(Ctx(t))
		w = &Watcher{t: t, ch: newStore(t).Watch(ctx, n.Name)}
		cancel()
		w.WaitClosed("after its context ended, its snapshot unread")

		s := newStore(t)
		w, _ = StartWatch(t, s, n.Name)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		w.WaitClosed("after its store was closed")

		w = &Watcher{t: t, ch: newStore(t).Watch(Ctx(t), "../x")}
		w.WaitClosed("of a network name that escapes")
	})
}

// churn acquires, updates twice and releases want's lease until stop,
// then acquires it once more and keeps it.
func churn(ctx context.Context, t *testing.T, s store.Store, network string, want store.Lease, ttl time.Duration, stop <-chan struct{}) {
	for i := 0; ; i++ {
		h, err := s.Acquire(ctx, network, want, ttl)
		if err != nil {
			t.Errorf("%s: %v", want.Host, err)
			return
		}
		select {
		case <-stop:
			return
		default:
		}
		for j := range 2 {
			if _, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
				return a.With("n", store.Attr{Version: 1, Data: fmt.Appendf(nil, "%d", 2*i+j)})
			}); err != nil {
				t.Errorf("%s: %v", want.Host, err)
			}
		}
		if err := h.Release(ctx); err != nil {
			t.Errorf("%s: %v", want.Host, err)
		}
	}
}

func eventsEqual(a, b []store.Event) bool {
	return slices.EqualFunc(a, b, func(x, y store.Event) bool {
		return x.Reset == y.Reset && x.Deleted == y.Deleted && x.Lease == y.Lease && x.Rev == y.Rev && slices.Equal(x.Leases, y.Leases) &&
			(x.Shared == nil) == (y.Shared == nil) && (x.Shared == nil || *x.Shared == *y.Shared)
	})
}

func formatEvents(evs []store.Event) string {
	var b []byte
	for _, ev := range evs {
		switch {
		case ev.Reset:
			b = fmt.Appendf(b, "  %d snapshot of %d\n", ev.Rev, len(ev.Leases))
		case ev.Shared != nil:
			b = fmt.Appendf(b, "  %d shared record %v\n", ev.Rev, ev.Shared.Attrs)
		case ev.Deleted:
			b = fmt.Appendf(b, "  %d deleted %s (written at %d)\n", ev.Rev, ev.Lease.Subnet, ev.Lease.Rev)
		default:
			b = fmt.Appendf(b, "  %d wrote %s %s\n", ev.Rev, ev.Lease.Subnet, ev.Lease.Host)
		}
	}
	return string(b)
}
