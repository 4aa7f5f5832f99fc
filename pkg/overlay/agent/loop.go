package agent

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/ack"
	"github.com/berth-cni/berth/pkg/overlay/peerplan"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/vxlan"
)

// maxBatch bounds how many waiting watch events one sync takes in: a
// burst is programmed at once, not event by event.
const maxBatch = 4096

// loop keeps the kernel in step with the store: it follows the store's
// watch (a snapshot, then one event per change: never a re-list), and
// after each batch of events programs what changed, acknowledges what its
// peers wait for and settles its own wait. It also reads the kernel back
// every Config.Resync (repairing what someone else changed), re-acquires a
// lost lease, and retries a failed sync with backoff. A store that is away
// leaves the kernel as it is.
func (a *Agent) loop(ctx context.Context) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := a.cfg.Store.Watch(wctx, a.cfg.Network.Name)
	every := a.cfg.Resync
	if every == 0 {
		every = DefaultResync
	}
	resync := time.NewTicker(every)
	defer resync.Stop()
	var again, deadline <-chan time.Time // the retry after a failure; the wait's bound
	rotation := time.NewTimer(time.Hour) // the key ring's next change (encrypted networks' rotator)
	rotation.Stop()
	defer rotation.Stop()
	full := false // the next sync reads the kernel back
	for {
		select {
		case <-ctx.Done():
			return a.stop()
		case ev, ok := <-events:
			if !ok {
				if ctx.Err() != nil {
					return a.stop()
				}
				a.st.update(func(s *status) { s.storeErrors++ })
				a.log.Printf("store: the watch ended; watching again after a retry")
				events = nil
				break
			}
			a.apply(ev)
			for range maxBatch {
				select {
				case ev, ok = <-events:
				default:
					ok = false
				}
				if !ok {
					break
				}
				a.apply(ev)
			}
		case <-again:
			again = nil
			if events == nil {
				events = a.cfg.Store.Watch(wctx, a.cfg.Network.Name)
				continue // its snapshot comes next
			}
		case <-resync.C:
			full = true
		case <-deadline:
			deadline = nil
		case <-rotation.C:
		case <-a.hold.Lost():
			if err := a.reacquire(ctx); err != nil {
				if ctx.Err() != nil {
					return a.stop()
				}
				a.setReady(false, err.Error())
				return err
			}
		}
		if a.leases == nil {
			continue // no snapshot yet
		}
		if a.sync(ctx, full) && events != nil {
			full, a.delay, again = false, 0, nil
		} else if again == nil {
			a.delay = min(max(2*a.delay, retryMin), retryMax)
			again = time.After(a.delay)
		}
		if a.wait != nil && deadline == nil {
			deadline = time.After(time.Until(a.wait.Deadline()))
		}
		if next := a.nextRotation(); !next.IsZero() {
			rotation.Reset(max(time.Until(next), 10*time.Millisecond))
		}
	}
}

// apply takes one watch event into the agent's view of the store.
func (a *Agent) apply(ev store.Event) {
	if ev.Shared != nil {
		a.applyShared(*ev.Shared) // a snapshot's, or a change of it
	}
	switch {
	case ev.Reset:
		a.leases = make(map[netip.Prefix]store.Lease, len(ev.Leases))
		a.acks = make(map[netip.Prefix]ack.Peer, len(ev.Leases))
		for _, l := range ev.Leases {
			a.leases[l.Subnet], a.acks[l.Subnet] = l, ack.Of(l)
		}
	case a.leases == nil:
		return // a change before a snapshot: the snapshot will hold it
	case ev.Shared != nil: // a change of the network's shared record, no lease
	case ev.Deleted:
		if l, ok := a.leases[ev.Lease.Subnet]; ok && l.Rev <= ev.Lease.Rev {
			delete(a.leases, ev.Lease.Subnet)
			delete(a.acks, ev.Lease.Subnet)
		}
	default:
		a.leases[ev.Lease.Subnet], a.acks[ev.Lease.Subnet] = ev.Lease, ack.Of(ev.Lease)
	}
	a.rev = max(a.rev, ev.Rev)
}

// sync programs the peers of the agent's view of the store (reading the
// kernel back first when full, or when the last sync failed), then
// acknowledges and settles the waits. It reports whether the kernel is in
// step.
func (a *Agent) sync(ctx context.Context, full bool) bool {
	mac := a.dev.MAC.String()
	if err := a.ensureDevice(); err != nil {
		a.st.update(func(s *status) { s.syncErrors++ })
		a.log.Printf("sync: %v", err)
		a.kernelOK = false
		return false
	}
	if a.dev.MAC.String() != mac {
		// A new device: publish its MAC, or every peer sends to the old
		// one; and its entries are gone.
		a.log.Printf("vxlan device %s has a new mac (%s, was %s): publishing it in the lease", a.dev.Name, a.dev.MAC, mac)
		a.kernelOK = false
		if a.acquire(ctx, a.hold.Lease().Subnet) != nil {
			return false // ctx ended, or a fatal error the next acquire reports again
		}
	}
	leases := slices.SortedFunc(maps.Values(a.leases), func(x, y store.Lease) int { return x.Subnet.Compare(y.Subnet) })
	peers := peerplan.PlanPeers(candidate(a.hold.Lease()), candidates(leases))
	if full || !a.kernelOK || !slices.Equal(peers, a.peers) {
		var stats peerplan.SyncStats
		var err error
		if full || !a.kernelOK {
			stats, err = vxlan.SyncPeers(a.ns, a.dev, peers)
		} else {
			stats, err = vxlan.ApplyPeers(a.ns, a.dev, a.peers, peers)
		}
		if err != nil {
			a.st.update(func(s *status) { s.syncErrors++ })
			a.log.Printf("sync: %v", err)
			a.kernelOK = false
			if !a.local.Ready {
				a.setReady(false, "programming peers: "+err.Error())
			}
			return false
		}
		for _, line := range diffPeers(a.peers, peers) {
			a.log.Print(line)
		}
		if stats.Changed() {
			a.log.Printf("synced %d peers: %d kernel entries added, %d replaced, %d deleted", stats.Peers, stats.Added, stats.Replaced, stats.Deleted)
		}
		a.peers, a.kernelOK = peers, true
		a.st.update(func(s *status) { s.syncs++; s.peers = len(peers) })
	}
	if a.esp != nil {
		// The receive SAs of every peer the kernel holds are in before
		// this host acknowledges them.
		if err := a.syncESP(ctx, full); err != nil {
			if a.esp.err == nil || a.esp.err.Error() != err.Error() {
				a.log.Printf("encryption: %v", err)
			}
			a.esp.err = err
			a.st.update(func(s *status) { s.syncErrors++ })
			a.setReady(false, "encryption: "+err.Error())
			return false
		}
		a.esp.err = nil
	}
	a.synced = a.rev
	a.acknowledge(ctx)
	a.settle(time.Now())
	return true
}

// others is what the acknowledgement protocol reads of the peers' leases:
// those of the hosts the kernel holds.
func (a *Agent) others() []ack.Peer {
	out := make([]ack.Peer, 0, len(a.peers))
	for _, p := range a.peers {
		if ap, ok := a.acks[p.Subnet]; ok {
			out = append(out, ap)
		}
	}
	return out
}

// acknowledge publishes how far this host has synced when a peer waits for
// it (ack.Publish); a failed write is tried again at the next sync.
func (a *Agent) acknowledge(ctx context.Context) {
	rev := ack.Publish(a.synced, a.published, a.others())
	if rev == 0 {
		return
	}
	if _, err := a.hold.Update(ctx, func(at store.Attrs) (store.Attrs, error) {
		return ack.SyncAttr.Set(at, ack.Sync{Rev: rev})
	}); err != nil {
		a.st.update(func(s *status) { s.storeErrors++ })
		a.log.Printf("store: acknowledge revision %d: %v", rev, err)
		return
	}
	a.published = rev
	a.st.update(func(s *status) { s.acks++ })
}

// await begins this host's wait for its peers to acknowledge its lease as
// last written (Acquire's revision): the agent is not ready until they
// have it in their kernels, so that a container it lets in is reached by
// every host at once.
func (a *Agent) await(ctx context.Context) error {
	l := a.hold.Lease()
	bound := a.cfg.AckBound
	if bound == 0 {
		bound = ack.DefaultBound
	}
	a.wait = &ack.Wait{Rev: l.Rev, Since: time.Now(), Bound: bound}
	a.acquired = l.Rev
	a.published = ack.Of(l).Sync // an earlier run's, taken over with the lease
	_, err := a.hold.Update(ctx, func(at store.Attrs) (store.Attrs, error) {
		return ack.AwaitAttr.Set(at, ack.Await{Rev: l.Rev})
	})
	return err
}

// settle makes the agent ready once its kernel holds the peers and its
// wait is over: every peer acknowledged, or the bound passed for those
// that did not (they are logged, and shown on /healthz and /metrics).
func (a *Agent) settle(now time.Time) {
	if a.wait == nil {
		if !a.local.Ready {
			a.setReady(true, "")
		}
		return
	}
	pending, late := a.wait.Check(now, a.others())
	if len(pending) > 0 {
		a.setReady(false, fmt.Sprintf("waiting for %d peers to acknowledge lease %s (revision %d): %s",
			len(pending), a.local.Subnet, a.wait.Rev, names(pending)))
		a.st.update(func(s *status) { s.ackPending = pending })
		return
	}
	took := now.Sub(a.wait.Since)
	if len(late) > 0 {
		a.log.Printf("ready without the acknowledgement of %d peers after %v: %s (they may not have this host's lease in their kernel yet)",
			len(late), a.wait.Bound, names(late))
	} else if len(a.peers) > 0 {
		a.log.Printf("lease %s acknowledged by all %d peers in %v", a.local.Subnet, len(a.peers), took.Round(time.Millisecond))
	}
	a.late = late
	a.st.update(func(s *status) {
		s.ackPending, s.ackLate, s.ackWait = nil, late, took
		if len(late) > 0 {
			s.ackTimeouts++
		}
	})
	a.wait = nil
	// An encrypted network keeps the Await: a peer that was late
	// acknowledges it when it catches up, and only then is sent to.
	if a.esp == nil {
		if _, err := a.hold.Update(context.Background(), func(at store.Attrs) (store.Attrs, error) {
			return ack.AwaitAttr.Delete(at), nil
		}); err != nil {
			a.log.Printf("store: clear the wait for acknowledgements: %v", err)
		}
	}
	a.setReady(true, "")
}

// shownNames bounds the peers a log line or a reason names.
const shownNames = 10

// names lists hosts for a person: the first shownNames, then how many
// more.
func names(hosts []string) string {
	if len(hosts) <= shownNames {
		return strings.Join(hosts, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(hosts[:shownNames], ", "), len(hosts)-shownNames)
}
