package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"
)

// pause is a random wait, uniform over one period of the file store's
// poll (200 ms), before each write of the join mode: the write before
// was seen at a poll, so without it every write would land just after
// one, and with a wait over a span that is not a whole period some phases
// would come up more often than others.
func pause(ctx context.Context) {
	t := time.NewTimer(rand.N(200 * time.Millisecond))
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// isTimeout tells a propagation that did not come in time (counted as
// missed) from a broken run.
func isTimeout(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && errors.Is(err, errLate)
}

// joinMode: the agent up and ready, then -joins simulated hosts one after
// another, each timed from Acquire's return to its three entries in the
// kernel and (unless -keep) from Release's return to none.
func (b *bench) joinMode(ctx context.Context) (err error) {
	o := b.o
	b.rep.title = fmt.Sprintf("berth overlay-scale -mode join: %d simulated hosts join one after another (%s), store %s",
		o.joins, map[bool]string{true: "kept", false: "each released after its join"}[o.keep], o.store)
	a, t0, err := b.startAgent()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stopAgent(a)) }()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = a.WaitReady(rctx)
	cancel()
	if err != nil {
		return err
	}
	progress("agent ready after %.0f ms", ms(time.Since(t0)))
	start, err := readProc(a.PID())
	if err != nil {
		return err
	}
	var joins, leaves samples
	var live []sim
	for i := 1; i <= o.joins && ctx.Err() == nil; i++ {
		pause(ctx)
		var h held
		if h, err = b.timeJoin(ctx, newSim(i), &joins); err != nil {
			return err
		}
		if o.keep {
			live = append(live, h.sim)
			continue
		}
		pause(ctx)
		if err = b.timeLeave(ctx, h, &leaves); err != nil {
			return err
		}
		if i%10 == 0 {
			progress("%d joins: %s", i, &joins)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	end, err := readProc(a.PID())
	if err != nil {
		return err
	}
	d, err := dumpEntries(b.host, live)
	if err != nil {
		return err
	}
	r := &b.rep
	b.propagation("join: Acquire returns → route, neighbour and FDB entry in the agent's kernel", &joins)
	r.add("  the Acquire calls themselves", joins.callsString())
	if !o.keep {
		b.propagation("leave: Release returns → all three entries gone", &leaves)
		r.add("  the Release calls themselves", leaves.callsString())
	}
	r.check("kernel entries at the end (netlink dump)", d.String(), "3 per peer",
		d.routes == d.live && d.neighs == d.live && d.fdb == d.live && d.peers == d.live)
	r.add("agent memory at the end", end.mem())
	r.add("agent CPU during the joins", fmt.Sprintf("%.2f s", (end.cpu-start.cpu).Seconds()))
	r.note("each write follows a random pause, uniform over 0–200 ms: one period of the file store's poll")
	r.note("simulated VTEPs in %s (behind the underlay's gateway), nobody answers them; the agent's lease TTL %v", simVTEPs, o.agentTTL)
	return nil
}

// scaleMode: -hosts leases in the store, then the agent starts; time to
// all of them in its kernel, its memory and CPU, the entries; then the
// churn.
func (b *bench) scaleMode(ctx context.Context) (err error) {
	o := b.o
	b.rep.title = fmt.Sprintf("berth overlay-scale -mode scale: %d simulated hosts, then churn of %d joins + %d leaves/s for %v, store %s",
		o.hosts, o.rate, o.rate, o.churn, o.store)
	sims := make([]sim, o.hosts)
	tracks := make([]*track, o.hosts)
	for i := range sims {
		sims[i] = newSim(i + 1)
		tracks[i] = b.w.expect(sims[i])
	}
	t := time.Now()
	live, err := b.acquireAll(ctx, sims)
	if err != nil {
		return err
	}
	wrote := time.Since(t)
	progress("%d leases written in %.1f s", len(live), wrote.Seconds())
	if b.el != nil {
		// Nothing but the bench has talked to etcd yet: its own count
		// must be etcd's, or the agent's share later is wrong.
		c, cerr := b.el.counts(ctx)
		if cerr != nil {
			return cerr
		}
		same := "they agree"
		if c.started["Range"] != float64(c.bench["Range"]) || c.started["Txn"] != float64(c.bench["Txn"]) {
			same = "MISMATCH: the agent's share below is off"
		}
		b.rep.note("calibration, before the agent started: etcd counted %.0f Range and %.0f Txn requests, the bench's forwarder %d and %d: %s",
			c.started["Range"], c.started["Txn"], c.bench["Range"], c.bench["Txn"], same)
	}

	a, t0, err := b.startAgent()
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stopAgent(a)) }()
	n := o.hosts
	err = b.w.waitUntil(ctx, o.converge, fmt.Sprintf("all %d peers in the agent's kernel", n), func() bool { return b.w.full >= n })
	atConv, perr := readProc(a.PID())
	if err = errors.Join(err, perr); err != nil {
		return err
	}
	sn := b.w.seen()
	conv := sn.lastFull.Sub(t0)
	progress("converged: %d peers %.0f ms after the agent's start", n, ms(conv))
	dConv, err := dumpEntries(b.host, sims)
	if err != nil {
		return err
	}

	r := &b.rep
	r.add(fmt.Sprintf("write %d leases (Acquire each, %d at a time) before the agent starts", n, o.workers), fmt.Sprintf("%.2f s", wrote.Seconds()))
	r.check(fmt.Sprintf("convergence: agent start → all %d peers' 3 entries (notifications)", n), fmt.Sprintf("%.0f ms", ms(conv)), "< 2 s", conv < 2*time.Second)
	if ready := b.log.readyAt(); !ready.IsZero() {
		r.add("  agent logged \"ready\"", fmt.Sprintf("%.0f ms after its start", ms(ready.Sub(t0))))
	}
	r.add("  first peer complete in the kernel", fmt.Sprintf("%.0f ms after the agent's start", ms(sn.firstFull.Sub(t0))))
	r.add("  entries seen by notification at convergence", fmt.Sprintf("routes %d, neighbours %d, fdb %d", sn.routes, sn.neighs, sn.fdb))
	r.check("  entries by netlink dump at convergence", dConv.String(), "3 per peer",
		dConv.routes == n && dConv.neighs == n && dConv.fdb == n && dConv.peers == n)
	r.check("agent memory at convergence", atConv.mem(), "RSS < 60 MB", atConv.hwmKB < 60<<10)
	r.add("agent CPU from start to convergence", fmt.Sprintf("%.2f s", atConv.cpu.Seconds()))

	if o.churn > 0 {
		if live, err = b.churn(ctx, a.PID(), live); err != nil {
			return err
		}
	}
	end, err := readProc(a.PID())
	if err != nil {
		return err
	}
	var liveSims []sim
	for _, h := range live {
		liveSims = append(liveSims, h.sim)
	}
	dEnd, err := dumpEntries(b.host, liveSims)
	if err != nil {
		return err
	}
	r.check("agent memory at the end", end.mem(), "RSS < 60 MB", end.hwmKB < 60<<10)
	r.add("agent CPU from start to the end", fmt.Sprintf("%.2f s", end.cpu.Seconds()))
	r.check("kernel entries at the end (netlink dump)", dEnd.String(), "3 per peer",
		dEnd.routes == dEnd.live && dEnd.neighs == dEnd.live && dEnd.fdb == dEnd.live && dEnd.peers == dEnd.live)
	r.note("simulated VTEPs in %s (behind the underlay's gateway), nobody answers them; their leases' TTL %v, the agent's %v", simVTEPs, o.simTTL, o.agentTTL)
	r.note("memory target checked on VmHWM (the peak); CPU is utime+stime from /proc/<pid>/stat")
	return nil
}

// acquireAll writes the leases of sims, o.workers at a time.
func (b *bench) acquireAll(ctx context.Context, sims []sim) ([]held, error) {
	out := make([]held, len(sims))
	next := make(chan int)
	var mu sync.Mutex
	var errs []error
	var wg sync.WaitGroup
	for range b.o.workers {
		wg.Go(func() {
			for i := range next {
				h, _, err := acquire(ctx, b.st, sims[i], b.o.simTTL)
				mu.Lock()
				out[i] = h
				if err != nil {
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	for i := range sims {
		mu.Lock()
		failed := len(errs) > 0
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		next <- i
		if (i+1)%200 == 0 {
			progress("%d leases written", i+1)
		}
	}
	close(next)
	wg.Wait()
	if err := errors.Join(append(errs, ctx.Err())...); err != nil {
		return nil, err
	}
	return out, nil
}

// churn runs -rate joins and -rate leaves a second for -churn: each tick
// a new simulated host acquires a lease and a random live one releases
// its own, both timed to the agent's kernel. It returns the live hosts
// after it.
func (b *bench) churn(ctx context.Context, pid int, live []held) ([]held, error) {
	o := b.o
	var joins, leaves samples
	var mu sync.Mutex
	var errs []error
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
	}
	before, err := b.counters(ctx, pid)
	if err != nil {
		return live, err
	}
	progress("churn: %d joins + %d leaves a second for %v", o.rate, o.rate, o.churn)
	b.log.mark("churn starts")
	next := o.hosts + 1
	tick := time.NewTicker(time.Second / time.Duration(o.rate))
	defer tick.Stop()
	end := time.After(o.churn)
	var wg sync.WaitGroup
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-end:
			break loop
		case <-tick.C:
		}
		s := newSim(next)
		next++
		wg.Go(func() {
			h, jerr := b.timeJoin(ctx, s, &joins)
			if jerr != nil {
				fail(jerr)
				return
			}
			mu.Lock()
			live = append(live, h)
			mu.Unlock()
		})
		mu.Lock()
		if len(live) == 0 {
			mu.Unlock()
			continue
		}
		i := rand.N(len(live))
		h := live[i]
		live = slices.Delete(live, i, i+1)
		mu.Unlock()
		wg.Go(func() {
			if lerr := b.timeLeave(ctx, h, &leaves); lerr != nil {
				fail(lerr)
			}
		})
	}
	ticked := time.Now()
	wg.Wait()
	b.log.mark("churn ends")
	if jerr := errors.Join(append(errs, ctx.Err())...); jerr != nil {
		return live, jerr
	}
	after, err := b.counters(ctx, pid)
	if err != nil {
		return live, err
	}
	window := after.at.Sub(before.at)
	cpu := after.proc.cpu - before.proc.cpu
	events := joins.n() + joins.missed + leaves.n() + leaves.missed
	r := &b.rep
	b.propagation(fmt.Sprintf("churn join: Acquire returns → 3 entries (%d/s)", o.rate), &joins)
	r.add("  the Acquire calls themselves", joins.callsString())
	b.propagation(fmt.Sprintf("churn leave: Release returns → 3 entries gone (%d/s)", o.rate), &leaves)
	r.add("  the Release calls themselves", leaves.callsString())
	r.add("agent CPU during churn", fmt.Sprintf("%.2f s over %.1f s (%.0f%% of one CPU; ticks %.1f s, then the last propagations)",
		cpu.Seconds(), window.Seconds(), 100*cpu.Seconds()/window.Seconds(), ticked.Sub(before.at).Seconds()))
	r.add("agent syncs during churn (its berth_overlay_syncs_total)", fmt.Sprintf("%d for %d joins + leaves", after.syncs-before.syncs, events))
	if b.el != nil {
		rng := after.etcd.started["Range"] - before.etcd.started["Range"]
		own := after.etcd.bench["Range"] - before.etcd.bench["Range"]
		agent := rng - float64(own)
		r.check("etcd Range requests during churn: the agent's (all − the bench's own)",
			fmt.Sprintf("%.0f (%.2f per join/leave; all %.0f, the bench's %d)", agent, agent/float64(max(events, 1)), rng, own),
			"no full re-list per event", agent < float64(events)/10)
		r.add("  etcd mvcc ranges during churn (Range and inside Txn, everyone's)", fmt.Sprintf("%.0f", after.etcd.mvccRng-before.etcd.mvccRng))
	}
	return live, nil
}

// timeJoin acquires s's lease and waits for its three entries in the
// agent's kernel, adding the propagation to into (a miss when late).
func (b *bench) timeJoin(ctx context.Context, s sim, into *samples) (held, error) {
	t := b.w.expect(s)
	h, w, err := acquire(ctx, b.st, s, b.o.simTTL)
	if err != nil {
		return held{}, err
	}
	full, err := b.w.waitFull(ctx, t, b.o.wait)
	return h, b.record(ctx, into, w, full, err, "join of "+s.host)
}

// timeLeave releases h's lease and waits until its entries are gone.
func (b *bench) timeLeave(ctx context.Context, h held, into *samples) error {
	t := b.w.trackOf(h.sim)
	w, err := release(ctx, h)
	if err != nil {
		return err
	}
	empty, err := b.w.waitEmpty(ctx, t, b.o.wait)
	return b.record(ctx, into, w, empty, err, "leave of "+h.host)
}

// record adds one propagation to into: w's return → at; a wait that
// passed its limit is a miss, noted in the log; other errors are the
// run's.
func (b *bench) record(ctx context.Context, into *samples, w write, at time.Time, err error, what string) error {
	switch {
	case err == nil:
		into.add(w, at)
	case isTimeout(ctx, err):
		into.miss()
		b.log.mark("%s: %v", what, err)
	default:
		return err
	}
	return nil
}

// propagation reports s against the target, which is etcd's;
// on the file store the target is shown, not checked.
func (b *bench) propagation(figure string, s *samples) {
	met := s.pct(99) < 100*time.Millisecond && s.missed == 0
	if b.el != nil {
		b.rep.check(figure, s.String(), "p99 < 100 ms on etcd", met)
		return
	}
	b.rep.rows = append(b.rep.rows, row{figure: figure, value: s.String(), target: "(etcd's: p99 < 100 ms)"})
}

// counters are the agent's and etcd's counters at one moment.
type counters struct {
	at    time.Time
	proc  procStat
	syncs int
	etcd  etcdCounts
}

func (b *bench) counters(ctx context.Context, pid int) (c counters, err error) {
	c.at = time.Now()
	if c.proc, err = readProc(pid); err != nil {
		return c, err
	}
	if c.syncs, err = b.agentSyncs(ctx); err != nil {
		return c, err
	}
	if b.el != nil {
		c.etcd, err = b.el.counts(ctx)
	}
	return c, err
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
