// Package ack is the acknowledgement protocol of the overlay's agents: a
// host is ready, and its containers are let in, only once every live peer
// has its lease in the kernel; the encrypted overlay will switch to a new
// key the same way, once every peer has acknowledged installing it.
//
// Each agent publishes in its own lease (a store attribute) how far it has
// synced: Sync.Rev, "my kernel holds every lease of the network as the
// store had them at this revision". A revision orders every write to the
// network's leases, so one number acknowledges everything before it. A
// host waiting for acknowledgements (a joining host, or one whose lease
// changed) publishes Await.Rev, the revision of its lease's write that
// must be acknowledged; a peer publishes its Sync when it has synced past
// an Await no Sync of its has covered yet, and otherwise writes nothing,
// so the protocol costs one write per peer per join, not per change. The
// waiting host is acknowledged by every peer whose Sync.Rev ≥ its Await;
// a peer that stays silent past a bound is reported and waited for no
// longer (an agent of an older release, a host that hangs), so readiness
// is never held for ever.
//
// It is pure: plain values in, plain values out; the agent reads and
// writes the attributes.
package ack

import (
	"slices"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// Sync is what every agent publishes once someone waits: its kernel holds
// every lease of the network as the store had them at revision Rev.
type Sync struct {
	Rev int64 `json:"rev"`
}

// Await is what a host waiting for acknowledgements publishes: the
// revision of its lease's write that its peers are to have synced.
type Await struct {
	Rev int64 `json:"rev"`
}

// The attributes, in every host's lease.
var (
	SyncAttr  = store.Attribute[Sync]{Name: "ack.sync", Version: 1}
	AwaitAttr = store.Attribute[Await]{Name: "ack.await", Version: 1}
)

// DefaultBound is how long a waiting host waits for a silent peer.
const DefaultBound = 5 * time.Second

// Peer is what the protocol reads of another host's lease: its name and
// what it published (0 for an attribute it has not: an agent that does
// not speak the protocol publishes neither).
type Peer struct {
	Host  string
	Sync  int64 // its Sync.Rev
	Await int64 // its Await.Rev: it waits for acknowledgements of that write
}

// Of reads the protocol's attributes of a lease. An attribute it cannot
// read (a version it does not know, bad data) counts as absent.
func Of(l store.Lease) Peer {
	p := Peer{Host: l.Host}
	if s, ok, err := SyncAttr.Get(l.Attrs); ok && err == nil {
		p.Sync = s.Rev
	}
	if a, ok, err := AwaitAttr.Get(l.Attrs); ok && err == nil {
		p.Await = a.Rev
	}
	return p
}

// Publish is the Sync a host should publish now, or 0 for none: it has
// synced up to revision synced and last published published; a Sync is
// due when a peer awaits a write at or before synced that published does
// not cover. (A host's own Sync may move past what it must: one write
// acknowledges every waiter up to synced.)
func Publish(synced, published int64, peers []Peer) int64 {
	for _, p := range peers {
		if p.Await > published && p.Await <= synced {
			return synced
		}
	}
	return 0
}

// Wait is one host's wait for the acknowledgement of a write of its lease
// at Rev, begun at Since. A peer that has not acknowledged it by
// Since+Bound is no longer waited for: Check reports it as late.
type Wait struct {
	Rev   int64
	Since time.Time
	Bound time.Duration
}

// Check says where the wait stands at now, given the peers' leases:
// pending names the peers still waited for, late those that did not
// acknowledge within the bound (and are waited for no more), both sorted.
// The wait is over when pending is empty.
func (w Wait) Check(now time.Time, peers []Peer) (pending, late []string) {
	expired := now.Sub(w.Since) >= w.Bound
	for _, p := range peers {
		if p.Sync >= w.Rev {
			continue
		}
		if expired {
			late = append(late, p.Host)
		} else {
			pending = append(pending, p.Host)
		}
	}
	slices.Sort(pending)
	slices.Sort(late)
	return pending, late
}

// Deadline is when the wait stops waiting for silent peers.
func (w Wait) Deadline() time.Time { return w.Since.Add(w.Bound) }
