package etcd

import (
	"context"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// A Watch is one range read of the network's shared key and subnet keys
// (netKeys.watched), the snapshot (its header revision is the snapshot's
// Rev), then a watch of that range from the next revision on, with the
// previous values, so that a delete or an expiry (etcd deletes the key of
// an expired etcd lease) carries the lease as it was. One watch of one
// range is what orders the shared record's changes among the leases': etcd
// sends a watch's events in revision order. A key in the range that is
// neither (none of berth's) is passed over. The client resumes a watch after a
// reconnection from the revision after the last one it delivered, so a
// restart of etcd loses nothing; when it cannot (the revision was
// compacted meanwhile), or etcd cancels the watch (no leader), the
// watcher reads a new snapshot and watches on from there. It never reads
// the store per event.

const (
	// watchRetryMin and watchRetryMax bound the backoff between attempts
	// to read a snapshot while etcd is away.
	watchRetryMin = 100 * time.Millisecond
	watchRetryMax = 5 * time.Second
)

// Watch sends a snapshot, then the changes, until ctx ends or the store
// is closed. A snapshot that fails (etcd away, a record that does not
// decode) is retried with backoff; nothing is sent meanwhile, as Leases
// fails meanwhile.
func (s *etcdStore) Watch(ctx context.Context, network string) <-chan store.Event {
	out := make(chan store.Event)
	k, err := s.keys(network)
	if err != nil || !s.t.Add() {
		close(out)
		return out
	}
	wctx, cancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.t.Context(), cancel)
	go func() {
		defer s.t.Done()
		defer close(out)
		defer stopOnClose()
		defer cancel()
		w := &watcher{s: s, keys: k, out: out}
		w.run(wctx)
	}()
	return out
}

// watcher is the state of one Watch.
type watcher struct {
	s    *etcdStore
	keys netKeys
	out  chan<- store.Event

	known  map[string]store.Lease // by key: the leases as sent
	shared store.Shared           // the shared record as sent
	rev    int64                  // the Rev of the last event sent
}

// run alternates snapshots and watches until ctx ends, backing off while
// snapshots fail or watches end without a change.
func (w *watcher) run(ctx context.Context) {
	delay := watchRetryMin
	for ctx.Err() == nil {
		if w.snapshot(ctx) {
			from := w.rev
			if w.follow(ctx); w.rev > from {
				delay = watchRetryMin
				continue
			}
		}
		sleepCtx(ctx, delay)
		delay = min(2*delay, watchRetryMax)
	}
}

// snapshot reads every lease of the network and its shared record at one
// revision and sends them; false when the read failed or ctx ended.
//
// Equivalent: etcdctl get $prefix/$network/shared $prefix/$network/subnets0
func (w *watcher) snapshot(ctx context.Context) bool {
	from, end := w.keys.watched()
	rctx, cancel := w.s.request(ctx)
	resp, err := w.s.cli.Get(rctx, from, clientv3.WithRange(end))
	cancel()
	if err != nil {
		return false
	}
	var subnets, shared []*mvccpb.KeyValue
	for _, kv := range resp.Kvs {
		switch key := string(kv.Key); {
		case key == w.keys.shared:
			shared = append(shared, kv)
		case strings.HasPrefix(key, w.keys.subnets):
			subnets = append(subnets, kv)
		}
	}
	sl, err := decodeLeases(w.keys.subnets, subnets)
	if err != nil {
		return false
	}
	sh, err := decodeShared(w.keys.shared, shared)
	if err != nil {
		return false
	}
	w.known = make(map[string]store.Lease, len(sl))
	for _, l := range sl {
		w.known[l.key] = l.Lease
	}
	w.shared = sh
	return w.send(ctx, store.Event{Reset: true, Leases: plainLeases(sl), Shared: &sh, Rev: resp.Header.Revision})
}

// follow watches from the revision after the last one sent and sends
// each change, until the watch ends: ctx's end, the store's close, or a
// gap that only a new snapshot fills (a compacted revision, a watch etcd
// cancelled, a value that does not decode).
//
// Equivalent: etcdctl watch --prev-kv --rev=$((rev+1)) $prefix/$network/shared $prefix/$network/subnets0
func (w *watcher) follow(ctx context.Context) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	from, end := w.keys.watched()
	opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithRev(w.rev + 1), clientv3.WithPrevKV()}
	for wr := range w.s.cli.Watch(wctx, from, opts...) {
		if wr.Canceled || wr.CompactRevision != 0 || wr.Err() != nil {
			return
		}
		// etcd sends the events of one revision (one transaction) in
		// one response.
		for evs := wr.Events; len(evs) > 0; {
			n := 1
			for n < len(evs) && evs[n].Kv.ModRevision == evs[0].Kv.ModRevision {
				n++
			}
			if !w.apply(ctx, evs[:n]) {
				return
			}
			evs = evs[n:]
		}
	}
}

// apply sends the events of one revision: one change as an Event, several
// (a transaction that wrote several keys) folded into a snapshot, so
// that the Rev of each event sent is the reader's revision after it.
// false when a value does not decode or ctx ended.
func (w *watcher) apply(ctx context.Context, evs []*clientv3.Event) bool {
	rev := evs[0].Kv.ModRevision
	if rev <= w.rev { // delivered already: not expected from etcd
		return true
	}
	var one store.Event
	changed := 0
	for _, ev := range evs {
		key := string(ev.Kv.Key)
		if key == w.keys.shared {
			sh := store.Shared{} // deleted by hand: as never written
			if ev.Type != clientv3.EventTypeDelete {
				var err error
				if sh, err = decodeShared(key, []*mvccpb.KeyValue{ev.Kv}); err != nil {
					return false
				}
			} else if w.shared == (store.Shared{}) {
				continue // never sent: nothing to take back
			}
			w.shared = sh
			one = store.Event{Shared: &sh, Rev: rev}
			changed++
			continue
		}
		if !strings.HasPrefix(key, w.keys.subnets) {
			continue // in the range, but none of berth's
		}
		if ev.Type == clientv3.EventTypeDelete {
			was, ok := w.known[key]
			if ev.PrevKv != nil {
				if l, err := decodeKV(w.keys.subnets, ev.PrevKv); err == nil {
					was, ok = l, true
				}
			}
			delete(w.known, key)
			if ok { // else never sent: nothing to take back
				one = store.Event{Lease: was, Deleted: true, Rev: rev}
				changed++
			}
			continue
		}
		l, err := decodeKV(w.keys.subnets, ev.Kv)
		if err != nil {
			return false
		}
		w.known[key] = l
		one = store.Event{Lease: l, Rev: rev}
		changed++
	}
	switch {
	case changed == 0:
		w.rev = rev
		return true
	case changed > 1:
		ls := make([]store.Lease, 0, len(w.known))
		for _, l := range w.known {
			ls = append(ls, l)
		}
		store.SortLeases(ls)
		sh := w.shared
		one = store.Event{Reset: true, Leases: ls, Shared: &sh, Rev: rev}
	}
	return w.send(ctx, one)
}

// send hands ev to the reader, waiting for it as long as ctx lives.
func (w *watcher) send(ctx context.Context, ev store.Event) bool {
	select {
	case w.out <- ev:
		w.rev = ev.Rev
		return true
	case <-ctx.Done():
		return false
	}
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
