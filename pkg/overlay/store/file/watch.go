package file

import (
	"cmp"
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// A Watch sends a snapshot read under the lock (the live leases, the
// shared record and the counter, after a sweep), then follows the changes
// of the leases directory and of the shared record: by inotify where the
// directory is on a local file system (one instance watching the leases
// directory and the network directory), reading only the files the
// events name; else by rereading every lease file and the shared record
// every 200 ms. Either way it compares what it reads with what it has
// sent, by revision: a file with a new revision is a write (a lease, the
// shared record) or a deletion (a tombstone), a file with the revision
// already sent is at most a renewal (no event). The shared record's
// revisions come from the same counter as the leases', so its writes
// take their place among the leases' by the rule below.
//
// Order. A watcher reads the counter, R, before it takes the events
// queued by then (or lists the directory). Writers take revisions under
// the lock, counter first, so every write up to R-1 is in the files and
// has queued its event, and the write of R may still be on its way. The
// watcher sends, sorted, the writes it read up to R; a file it read that
// is already past R waits for the next round, which reads the counter
// again. So what a later round sends comes after what this one sent, and
// revisions increase.
//
// Expiry writes nothing and so has no file event: a watcher keeps the
// time of the earliest expiry of the leases it has sent, and then sweeps
// under the lock, which buries each expired lease (a tombstone, at a
// revision of its own), so that every watcher reads the expiry like a
// release, once. A lease renewed meanwhile is not swept.
//
// A change the watcher cannot place (a lease file or the shared record
// gone without a tombstone, removed by hand; one written without a
// revision, by an older berth or by hand; inotify events dropped; a
// directory's watch ended; a file that does not decode) is a gap: it
// sends a new snapshot.

const (
	// watchRetryMin and watchRetryMax bound the backoff between attempts
	// to read a snapshot.
	watchRetryMin = 100 * time.Millisecond
	watchRetryMax = 5 * time.Second
	// sweepWait bounds a watcher's wait for the lock to sweep.
	sweepWait = time.Second
	// sweepGap is the least time between two sweeps of one watcher, so
	// that it does not spin on a lease whose renewal it has not read yet.
	sweepGap = 50 * time.Millisecond
)

// Watch creates the network's directory if it is missing, to watch it.
func (s *fileStore) Watch(ctx context.Context, network string) <-chan store.Event {
	out := make(chan store.Event)
	d, err := s.netDir(network)
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
		w := &watcher{s: s, d: d, out: out}
		w.run(wctx)
	}()
	return out
}

// entry is a lease file as a watcher last read it.
type entry struct {
	f    fileLease
	sent bool // the reader has it as a live lease
}

// watcher is the state of one Watch.
type watcher struct {
	s   *fileStore
	d   string // the network's directory
	out chan<- store.Event

	known         map[netip.Prefix]entry
	pending       map[netip.Prefix]bool // read past the counter: to read again
	shared        store.Shared          // the shared record as sent
	sharedPending bool                  // the shared record read past the counter
	rev           int64                 // the Rev of the last event sent
	changes       int                   // change events sent, for run's backoff
	counter       int64                 // the counter as last read

	noSweep  time.Time     // no sweep before
	sweepGap time.Duration // grows while sweeps fail
}

// fileRead is one lease file as read; found is false when it is gone.
type fileRead struct {
	subnet netip.Prefix
	f      fileLease
	found  bool
}

// sharedRead is the shared record file as read; found is false when
// there is none.
type sharedRead struct {
	sh    store.Shared
	found bool
}

// run sends snapshots and follows the changes after them until ctx ends,
// backing off while snapshots fail or a gap comes before any change.
func (w *watcher) run(ctx context.Context) {
	delay := watchRetryMin
	for ctx.Err() == nil {
		if w.once(ctx) {
			delay = watchRetryMin
			continue
		}
		sleepCtx(ctx, delay)
		delay = min(2*delay, watchRetryMax)
	}
}

// once opens the event source, sends a snapshot and follows the changes
// until a gap; true when it sent a change after the snapshot.
func (w *watcher) once(ctx context.Context) bool {
	leases := filepath.Join(w.d, "leases")
	if err := os.MkdirAll(leases, dirMode); err != nil {
		return false
	}
	var in *inotify
	if _, shared := sharedFS(leases); !w.s.opts.Poll && !shared {
		in, _ = openInotify(leases, w.d) // nil (and a poll) where inotify fails, e.g. out of instances
	}
	if in != nil {
		defer in.close()
		defer context.AfterFunc(ctx, in.close)()
	}
	// The events queued from here on include every write after the
	// snapshot.
	if !w.snapshot(ctx) {
		return false
	}
	before := w.changes
	if in != nil {
		w.s.stats.inotifies.Add(1)
		w.followInotify(ctx, in)
	} else {
		w.s.stats.polls.Add(1)
		w.followPoll(ctx)
	}
	return w.changes > before
}

// snapshot reads, under the lock, the lease files (sweeping the expired
// first), the shared record and the counter, and sends the live leases
// and the record as of the counter.
//
// Equivalent: flock $dir/$network/lock sh -c 'cat $dir/$network/rev $dir/$network/shared.json $dir/$network/leases/*.json'
func (w *watcher) snapshot(ctx context.Context) bool {
	type snap struct {
		recs   []fileLease
		shared store.Shared
		rev    int64
		hasRev bool
	}
	lctx, cancel := context.WithTimeout(ctx, fileLockWait)
	sn, err := locked(lctx, w.d, func() (snap, error) {
		recs, err := sweep(w.d, time.Now())
		if err != nil {
			return snap{}, err
		}
		sh, _, err := readShared(w.d)
		if err != nil {
			return snap{}, err
		}
		rev, ok, err := readRev(w.d)
		return snap{recs: recs, shared: sh, rev: rev, hasRev: ok}, err
	})
	cancel()
	w.s.stats.scans.Add(1)
	if err != nil {
		return false
	}
	switch {
	case !sn.hasRev:
		sn.rev = max(sn.rev, sn.shared.Rev)
	case sn.shared.Rev > sn.rev:
		return false
	}
	w.known = make(map[netip.Prefix]entry, len(sn.recs))
	w.pending = map[netip.Prefix]bool{}
	w.shared, w.sharedPending = sn.shared, false
	live := []store.Lease{}
	for _, f := range sn.recs {
		switch {
		case !sn.hasRev: // a counter removed by hand: the next write starts after the files'
			sn.rev = max(sn.rev, f.rev())
		case f.rev() > sn.rev: // not written by a writer that keeps the counter
			return false
		}
		w.known[f.Subnet] = entry{f: f, sent: !f.tombstone()}
		if !f.tombstone() {
			live = append(live, f.Lease)
		}
	}
	store.SortLeases(live)
	w.counter = sn.rev
	sh := sn.shared
	return w.send(ctx, store.Event{Reset: true, Leases: live, Shared: &sh, Rev: sn.rev})
}

// followInotify reads the files that inotify events name until a gap or
// ctx's end.
func (w *watcher) followInotify(ctx context.Context, in *inotify) {
	again := false // read the pending files once more without waiting
	for ctx.Err() == nil {
		var counter int64
		var cerr error
		names, lost, err := in.read(w.deadline(), !again, func() { counter, cerr = w.readCounter() })
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			w.sweep(ctx)
			again = false
			continue
		case err != nil, lost, cerr != nil:
			return
		}
		todo := map[netip.Prefix]bool{}
		for s := range w.pending {
			todo[s] = true
		}
		for _, name := range names[0] { // the leases directory's
			s, ok, err := leaseFileName(w.d, name)
			if err != nil {
				return
			}
			if ok {
				todo[s] = true
			}
		}
		reads := make([]fileRead, 0, len(todo))
		for s := range todo {
			f, found, err := readLeaseFile(leasePath(w.d, s), s)
			w.s.stats.reads.Add(1)
			if err != nil {
				return
			}
			reads = append(reads, fileRead{subnet: s, f: f, found: found})
		}
		// The network directory's: the shared record's among the
		// counter's, the lock's and the config's.
		var sh *sharedRead
		if w.sharedPending || slices.Contains(names[1], sharedFile) {
			var serr error
			if sh, serr = w.readShared(); serr != nil {
				return
			}
		}
		if !w.apply(ctx, counter, reads, sh) {
			return
		}
		again = (len(w.pending) > 0 || w.sharedPending) && !again
	}
}

// followPoll rereads every lease file every filePoll until a gap or ctx's
// end.
func (w *watcher) followPoll(ctx context.Context) {
	tick := time.NewTicker(filePoll)
	defer tick.Stop()
	again := false
	for ctx.Err() == nil {
		if !again && !w.waitPoll(ctx, tick.C) {
			continue
		}
		counter, err := w.readCounter()
		if err != nil {
			return
		}
		reads, err := w.readAll()
		if err != nil {
			return
		}
		sh, err := w.readShared()
		if err != nil || !w.apply(ctx, counter, reads, sh) {
			return
		}
		again = (len(w.pending) > 0 || w.sharedPending) && !again
	}
}

// waitPoll waits for the next tick (true) or the earliest expiry (a sweep,
// then true) or ctx's end (false).
func (w *watcher) waitPoll(ctx context.Context, tick <-chan time.Time) bool {
	var expiry <-chan time.Time
	if dl := w.deadline(); !dl.IsZero() {
		t := time.NewTimer(time.Until(dl))
		defer t.Stop()
		expiry = t.C
	}
	select {
	case <-ctx.Done():
		return false
	case <-tick:
	case <-expiry:
		w.sweep(ctx)
	}
	return true
}

// readAll reads every lease file, and reports those the watcher knows
// that are gone.
//
// Equivalent: cat $dir/$network/leases/*.json
func (w *watcher) readAll() ([]fileRead, error) {
	w.s.stats.scans.Add(1)
	recs, err := readLeases(w.d)
	if err != nil {
		return nil, err
	}
	reads := make([]fileRead, 0, max(len(recs), len(w.known)))
	seen := make(map[netip.Prefix]bool, len(recs))
	for _, f := range recs {
		seen[f.Subnet] = true
		reads = append(reads, fileRead{subnet: f.Subnet, f: f, found: true})
	}
	for s := range w.known {
		if !seen[s] {
			reads = append(reads, fileRead{subnet: s})
		}
	}
	return reads, nil
}

// readShared reads the shared record file.
//
// Equivalent: cat $dir/$network/shared.json
func (w *watcher) readShared() (*sharedRead, error) {
	w.s.stats.reads.Add(1)
	sh, found, err := readShared(w.d)
	if err != nil {
		return nil, err
	}
	return &sharedRead{sh: sh, found: found}, nil
}

// readCounter reads the counter; a network without one is at 0.
func (w *watcher) readCounter() (int64, error) {
	rev, _, err := readRev(w.d)
	return rev, err
}

// apply compares the files read after the counter was read as counter
// (the lease files reads, and the shared record when sh is not nil) with
// what the reader has, and sends the changes in revision order. false on
// a gap, or when ctx ended.
func (w *watcher) apply(ctx context.Context, counter int64, reads []fileRead, sh *sharedRead) bool {
	if counter < w.counter { // the counter went back: rewritten by hand
		return false
	}
	w.counter = counter
	var evs []store.Event
	if sh != nil {
		ev, ok := w.applyShared(counter, *sh)
		if !ok {
			return false
		}
		if ev != nil {
			evs = append(evs, *ev)
		}
	}
	for _, r := range reads {
		e, had := w.known[r.subnet]
		if !r.found {
			if had && e.sent { // gone without a tombstone
				return false
			}
			delete(w.known, r.subnet)
			delete(w.pending, r.subnet)
			continue
		}
		f, rev := r.f, r.f.rev()
		if rev > counter {
			w.pending[r.subnet] = true
			continue
		}
		delete(w.pending, r.subnet)
		switch {
		case had && rev == e.f.rev():
			if rev == 0 && (f.Lease != e.f.Lease || f.Holder != e.f.Holder) {
				return false // a write without a revision
			}
			w.known[r.subnet] = entry{f: f, sent: e.sent} // a renewal
			continue
		case had && rev < e.f.rev(), rev == 0:
			return false // a file gone back, or new without a revision
		}
		if f.tombstone() {
			if had && e.sent {
				evs = append(evs, store.Event{Lease: f.Lease, Deleted: true, Rev: rev})
			}
			w.known[r.subnet] = entry{f: f}
			continue
		}
		evs = append(evs, store.Event{Lease: f.Lease, Rev: rev})
		w.known[r.subnet] = entry{f: f, sent: true}
	}
	slices.SortFunc(evs, func(a, b store.Event) int { return cmp.Compare(a.Rev, b.Rev) })
	for _, ev := range evs {
		if ev.Rev <= w.rev || !w.send(ctx, ev) {
			return false
		}
		w.changes++
	}
	return true
}

// applyShared compares the shared record read after the counter was read
// as counter with the one the reader has: its change as an event, nil
// when there is none (or it waits for the next round); false on a gap.
func (w *watcher) applyShared(counter int64, r sharedRead) (*store.Event, bool) {
	switch {
	case !r.found:
		w.sharedPending = false
		return nil, w.shared.Rev == 0 // gone, removed by hand: a gap
	case r.sh.Rev > counter:
		w.sharedPending = true
		return nil, true
	}
	w.sharedPending = false
	switch {
	case r.sh.Rev == w.shared.Rev:
		return nil, r.sh.Attrs == w.shared.Attrs // else rewritten without a revision
	case r.sh.Rev < w.shared.Rev:
		return nil, false // gone back
	}
	w.shared = r.sh
	sh := r.sh
	return &store.Event{Shared: &sh, Rev: sh.Rev}, true
}

// deadline is when the earliest lease the reader has expires (not before
// the next sweep may run), or zero when it has none.
func (w *watcher) deadline() time.Time {
	var first int64
	for _, e := range w.known {
		if e.sent && (first == 0 || e.f.Expires < first) {
			first = e.f.Expires
		}
	}
	if first == 0 {
		return time.Time{}
	}
	dl := time.UnixMilli(first)
	if dl.Before(w.noSweep) {
		return w.noSweep
	}
	return dl
}

// sweep buries the expired leases under the lock. A lease renewed since
// the watcher read it stays; its renewal is read next.
//
// Equivalent: flock -w 1 $dir/$network/lock (bury every expired lease file)
func (w *watcher) sweep(ctx context.Context) {
	sctx, cancel := context.WithTimeout(ctx, sweepWait)
	defer cancel()
	w.s.stats.scans.Add(1)
	_, err := locked(sctx, w.d, func() ([]fileLease, error) { return sweep(w.d, time.Now()) })
	if err != nil {
		w.sweepGap = min(max(2*w.sweepGap, sweepGap), watchRetryMax)
	} else {
		w.sweepGap = sweepGap
	}
	w.noSweep = time.Now().Add(w.sweepGap)
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
