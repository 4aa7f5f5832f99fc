package agent

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/overlay/esp"
	"github.com/berth-cni/berth/pkg/overlay/espplan"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/state"
)

// This file is the encrypted overlay's part of the agent. Its order keeps
// cleartext off the wire: the guard (package esp) is in the kernel before
// the VXLAN device exists and stays when the agent stops or dies; the
// agent is ready only while every SA it plans is installed; an error is
// never a log line and traffic in the clear, but a reason on /healthz and
// in the Local file, which the plugin's ADD and STATUS report.

// espState is the encrypted overlay's state in the agent; nil for a plain
// network.
type espState struct {
	spec esp.Spec
	self espplan.Host

	ring      espplan.Ring // the shared record's, once read and valid
	ringErr   error        // the shared record's ring is unreadable
	sharedRev int64

	have        []espplan.SA            // the kernel's SAs as the last apply left them
	kernelOK    bool                    // have is what the kernel holds (else read it back)
	tx          map[netip.Prefix]uint32 // per peer subnet, the epoch sent with
	gen         uint32                  // this host's generation (State.Gen)
	published   espplan.State           // this host's esp.state as last written (or taken over)
	publishedOK bool                    // published was written by this run
	err         error                   // the last failure; not ready while set
	rotations   uint64
	last        []espplan.SA      // the last plan applied (nil before the first)
	seen        map[string]uint32 // per peer host, the Gen its receive SAs were made for (seenFile)
}

// startESP brings the encryption up before the VXLAN device: the kernel
// must hold ESP with the AEAD, no other VXLAN device may use the port
// (the guard is per port), and the guard goes in. Each failure is a
// reason, retried until it clears or ctx ends.
func (a *Agent) startESP(ctx context.Context, vtep netip.Addr) error {
	n := a.cfg.Network
	if err := espplan.CheckNetwork(n); err != nil {
		return fatal{err}
	}
	a.esp = &espState{spec: esp.SpecFor(n, vtep), tx: map[netip.Prefix]uint32{}, seen: readSeen(a.cfg.StateDir, n.Name)}
	spec, ns := a.esp.spec, a.ns
	a.st.update(func(s *status) {
		s.esp = true
		s.espCounters = func() (esp.Counters, map[string]uint64, error) {
			drops, gerr := esp.CheckGuard(ns, spec)
			xfrm, xerr := esp.XfrmStats(ns)
			return drops, xfrm, errors.Join(gerr, xerr)
		}
	})
	return a.retryKernel(ctx, "encryption", func() error {
		if err := esp.Probe(a.ns); err != nil {
			return err
		}
		if err := a.portOfItsOwn(); err != nil {
			return err
		}
		return esp.EnsureGuard(a.ns, a.esp.spec)
	})
}

// portOfItsOwn refuses a VXLAN device other than the network's on its
// UDP port: the guard covers the port, so that device's traffic would be
// blocked or taken into the network's SAs.
func (a *Agent) portOfItsOwn() error {
	links, err := a.ns.Netlink().LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		if v, ok := l.(*netlink.Vxlan); ok && v.Port == int(a.esp.spec.Port) && v.Name != a.spec.Name {
			return fmt.Errorf("vxlan device %s uses UDP port %d too: an encrypted network needs a port of its own (-port)", v.Name, v.Port)
		}
	}
	return nil
}

// removeESP takes out what an encrypted past of a now plain network left:
// its guard and SAs (the operator turned encryption off). A kernel
// without xfrm has none.
func (a *Agent) removeESP(vtep netip.Addr) {
	if _, err := a.ns.Xfrm(); err != nil {
		return
	}
	spec := esp.SpecFor(a.cfg.Network, vtep)
	sas, err := esp.ListSAs(a.ns, spec)
	if err == nil {
		err = esp.DeleteSAs(a.ns, spec)
	}
	guard, gerr := esp.DeleteGuard(a.ns, spec)
	if err := errors.Join(err, gerr); err != nil {
		a.log.Printf("encryption off: remove the network's SAs and guard: %v", err)
		return
	}
	if len(sas) > 0 || guard {
		a.log.Printf("encryption off: removed the network's %d SAs and its guard", len(sas))
	}
}

// retryKernel runs fn until it succeeds or ctx ends: each failure is the
// agent's reason for not being ready, logged when it changes.
func (a *Agent) retryKernel(ctx context.Context, what string, fn func() error) error {
	delay := retryMin
	last := ""
	for {
		err := fn()
		if err == nil {
			return nil
		}
		if msg := err.Error(); msg != last {
			a.log.Printf("%s: %v (retrying every %v at most)", what, err, retryMax)
			last = msg
		}
		a.setReady(false, what+": "+err.Error())
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, retryMax)
	}
}

// espGeneration is the attributes the Acquire carries for the encryption:
// a new State.Gen when the kernel holds no transmit SA of the network
// (a first start, a reboot): the SAs this host will make start their
// sequence numbers again, and every peer must make its receive SAs from
// it again. With transmit SAs in the kernel (a restart), none: the
// stored State is kept.
func (a *Agent) espGeneration() (store.Attrs, error) {
	have, err := esp.ListSAs(a.ns, a.esp.spec)
	if err != nil {
		return store.Attrs{}, err
	}
	if slices.ContainsFunc(have, func(s espplan.SA) bool { return s.Out }) {
		return store.Attrs{}, nil
	}
	g, err := newGen()
	if err != nil {
		return store.Attrs{}, err
	}
	a.esp.gen, a.esp.published = g, espplan.State{Gen: g}
	a.log.Printf("encryption: no transmit SA in the kernel: generation %d (the peers make their receive SAs from this host again)", g)
	return espplan.StateAttr.Set(store.Attrs{}, a.esp.published)
}

// newGen is a random nonzero generation.
func newGen() (uint32, error) {
	var b [4]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		if g := binary.BigEndian.Uint32(b[:]); g != 0 {
			return g, nil
		}
	}
}

// applyShared takes the shared record of a watch event in.
func (a *Agent) applyShared(sh store.Shared) {
	if a.esp == nil || sh.Rev < a.esp.sharedRev {
		return
	}
	a.esp.sharedRev = sh.Rev
	r, ok, err := espplan.RingAttr.Get(sh.Attrs)
	switch {
	case err != nil:
		a.esp.ringErr = fmt.Errorf("the network's key ring in the store: %w", err)
	case !ok:
		a.esp.ring, a.esp.ringErr = espplan.Ring{}, nil
	default:
		if verr := r.Validate(); verr != nil {
			a.esp.ringErr = fmt.Errorf("the network's key ring in the store: %w", verr)
			return
		}
		if old, _ := a.esp.ring.Newest(); len(a.esp.ring.Keys) > 0 && !slices.Equal(old.Secret, lastSecret(r)) {
			a.log.Printf("key ring: now %s", r)
		}
		a.esp.ring, a.esp.ringErr = r, nil
	}
}

func lastSecret(r espplan.Ring) []byte {
	n, _ := r.Newest()
	return n.Secret
}

// rotator reports whether this host rotates the ring: the holder of the
// lowest live subnet. Two hosts that both think so (their views of the
// store differ for a moment) are safe: UpdateShared is a compare-and-swap
// and each builds on the ring it finds.
func (a *Agent) rotator() bool {
	own := a.hold.Lease().Subnet
	for s := range a.leases {
		if s.Compare(own) < 0 {
			return false
		}
	}
	return true
}

// rotate makes the ring's next state when it is due (a first key, a new
// key every KeyRotation, pruning): only the rotator does.
func (a *Agent) rotate(ctx context.Context, now time.Time) error {
	e := a.esp
	if !a.rotator() {
		return nil
	}
	n := a.cfg.Network
	rot := espplan.Rotation{Every: n.KeyRotation, Grace: espplan.DefaultGrace(n.KeyRotation)}
	minTx := a.minTx()
	if e.ringErr == nil && !espplan.Due(e.ring, now, rot, minTx) {
		return nil
	}
	var made espplan.Ring
	sh, err := a.cfg.Store.UpdateShared(ctx, n.Name, func(at store.Attrs) (store.Attrs, error) {
		cur, ok, err := espplan.RingAttr.Get(at)
		if err != nil || ok && cur.Validate() != nil {
			a.log.Printf("key ring: the stored ring is unreadable (%v): replacing it with a new one", errors.Join(err, cur.Validate()))
			cur = espplan.Ring{}
		}
		next, changed, err := espplan.NextRing(cur, now, rot, minTx, newSecret)
		if err != nil || !changed {
			return at, err
		}
		made = next
		return espplan.RingAttr.Set(at, next)
	})
	if err != nil {
		return fmt.Errorf("rotate the key ring: %w", err)
	}
	if len(made.Keys) > 0 {
		e.rotations++
		a.log.Printf("key ring: stored %s", made)
	}
	a.applyShared(sh)
	return nil
}

// newSecret is a ring key from crypto/rand.
func newSecret() ([]byte, error) {
	b := make([]byte, espplan.KeySize)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	return b, nil
}

// minTx is the oldest epoch a live host transmits with (0: none does).
func (a *Agent) minTx() uint32 {
	m := a.esp.published.Tx
	for _, l := range a.leases {
		if st, ok, err := espplan.StateAttr.Get(l.Attrs); ok && err == nil && st.Tx != 0 && (m == 0 || st.Tx < m) {
			m = st.Tx
		}
	}
	return m
}

// nextRotation is when the rotator should look at the ring again: the
// newest key's age reaching KeyRotation, or the grace after which an old
// key may go. Zero when this host is not the rotator.
func (a *Agent) nextRotation() time.Time {
	if a.esp == nil || !a.rotator() {
		return time.Time{}
	}
	n, ok := a.esp.ring.Newest()
	if !ok {
		return time.Now()
	}
	next := n.Created.Add(a.cfg.Network.KeyRotation)
	if k := a.esp.ring.Keys; len(k) > 2 {
		next = minTime(next, k[1].Created.Add(espplan.DefaultGrace(a.cfg.Network.KeyRotation)))
	}
	return next
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

// syncESP installs the SAs of the ring and the peers the kernel holds,
// then publishes this host's State. Not ready without a ring (the
// rotator makes the first) or while anything fails.
func (a *Agent) syncESP(ctx context.Context, full bool) error {
	e := a.esp
	now := time.Now()
	if err := a.rotate(ctx, now); err != nil {
		a.st.update(func(s *status) { s.storeErrors++ })
		a.log.Printf("%v", err)
	}
	if e.ringErr != nil {
		return e.ringErr
	}
	if len(e.ring.Keys) == 0 {
		return errors.New("waiting for the network's key ring")
	}
	own := a.hold.Lease()
	idx, err := espplan.SubnetIndex(a.cfg.Network, own.Subnet)
	if err != nil {
		return err
	}
	e.self = espplan.Host{Name: own.Host, VTEP: own.VTEP, Index: idx}
	if e.last == nil && e.published == (espplan.State{}) {
		// A restart: the State stored in the lease taken over is this
		// host's, and so is its generation.
		e.published, _, _ = espplan.StateAttr.Get(own.Attrs)
		e.gen = e.published.Gen
	}
	if full || !e.kernelOK {
		if _, err := esp.CheckGuard(a.ns, e.spec); err != nil {
			a.log.Printf("encryption: %v: installing it again", err)
			if err := esp.EnsureGuard(a.ns, e.spec); err != nil {
				return err
			}
		}
		have, err := esp.ListSAs(a.ns, e.spec)
		if err != nil {
			return err
		}
		if lost := lostTransmit(e.last, have); len(lost) > 0 {
			// Made again, they start their sequence numbers again: the
			// peers must make their receive SAs again too.
			g, err := newGen()
			if err != nil {
				return err
			}
			a.log.Printf("encryption: %d transmit SAs were gone from the kernel (%s): making them again, generation %d", len(lost), lost[0], g)
			e.gen = g
		}
		e.have = have
		if e.last == nil {
			// A restart: go on sending to each peer with the key the
			// kernel does, while the peer has not acknowledged this
			// run's Acquire. Deleting that SA and making it again would
			// restart its sequence numbers, which the peer refuses.
			e.tx = a.txInKernel(have)
		}
	}
	peers := make([]espplan.Peer, 0, len(a.peers))
	gens := make(map[string]uint32, len(a.peers))
	for _, p := range a.peers {
		l := a.leases[p.Subnet]
		pi, err := espplan.SubnetIndex(a.cfg.Network, p.Subnet)
		if err != nil {
			continue
		}
		st, _, _ := espplan.StateAttr.Get(l.Attrs) // unreadable: as none
		gens[p.Host] = st.Gen
		peers = append(peers, espplan.Peer{
			Host:   espplan.Host{Name: p.Host, VTEP: p.VTEP, Index: pi},
			State:  st,
			Synced: a.acks[p.Subnet].Sync >= a.acquired,
			Tx:     e.tx[p.Subnet],
		})
	}
	plan, err := espplan.PlanSAs(a.cfg.Network.Name, e.self, peers, e.ring)
	if err != nil {
		return err
	}
	plan.State.Gen = e.gen
	changes := espplan.Diff(e.have, plan.SAs)
	for _, p := range peers {
		if old, ok := e.seen[p.Name]; ok && gens[p.Name] != 0 && old != gens[p.Name] {
			r := espplan.ResetFrom(kept(e.have, changes), p.VTEP)
			a.log.Printf("encryption: %s has a new generation (%d, was %d): making its %d receive SAs again", p.Name, gens[p.Name], old, len(r.Add))
			changes.Delete, changes.Add = append(changes.Delete, r.Delete...), append(changes.Add, r.Add...)
		}
	}
	if !changes.Empty() {
		n, err := esp.Apply(a.ns, e.spec, changes)
		if err != nil {
			e.kernelOK = false
			return fmt.Errorf("%w (%d of %d SA changes made)", err, n, len(changes.Steps()))
		}
		a.log.Printf("encryption: %s", summary(changes))
	}
	e.have, e.last, e.kernelOK = plan.SAs, plan.SAs, true
	if !maps.Equal(e.seen, gens) {
		e.seen = gens
		if err := writeSeen(a.cfg.StateDir, a.cfg.Network.Name, gens); err != nil {
			a.log.Printf("encryption: %v", err)
		}
	}
	e.tx = map[netip.Prefix]uint32{}
	byVTEP := map[netip.Addr]netip.Prefix{}
	for _, p := range a.peers {
		byVTEP[p.VTEP] = p.Subnet
	}
	for _, s := range plan.SAs {
		if s.Out {
			e.tx[byVTEP[s.Dst]] = s.Epoch
		}
	}
	if plan.State != e.published || !e.publishedOK {
		if _, err := a.hold.Update(ctx, func(at store.Attrs) (store.Attrs, error) {
			return espplan.StateAttr.Set(at, plan.State)
		}); err != nil {
			a.st.update(func(s *status) { s.storeErrors++ })
			a.log.Printf("store: publish encryption state %+v: %v", plan.State, err)
		} else {
			e.published, e.publishedOK = plan.State, true
		}
	}
	a.espStatus(now)
	return nil
}

// txInKernel is, per peer subnet, the ring epoch of the kernel's transmit
// SA to that peer (by its SPI: the epoch's low bits, within the ring).
func (a *Agent) txInKernel(have []espplan.SA) map[netip.Prefix]uint32 {
	bySPI := map[uint32]uint32{}
	for _, k := range a.esp.ring.Keys {
		bySPI[espplan.SPI(a.esp.self, k.Epoch)] = k.Epoch
	}
	byVTEP := map[netip.Addr]netip.Prefix{}
	for _, p := range a.peers {
		byVTEP[p.VTEP] = p.Subnet
	}
	tx := map[netip.Prefix]uint32{}
	for _, s := range have {
		if e, ok := bySPI[s.SPI]; ok && s.Out {
			if subnet, ok := byVTEP[s.Dst]; ok {
				tx[subnet] = e
			}
		}
	}
	return tx
}

// lostTransmit lists the transmit SAs of the last plan the kernel no
// longer holds (deleted by someone else).
func lostTransmit(last, have []espplan.SA) []espplan.SA {
	in := make(map[espplan.ID]bool, len(have))
	for _, s := range have {
		in[s.ID()] = true
	}
	var lost []espplan.SA
	for _, s := range last {
		if s.Out && !in[s.ID()] {
			lost = append(lost, s)
		}
	}
	return lost
}

// kept is the SAs of have that changes leaves in place.
func kept(have []espplan.SA, c espplan.Changes) []espplan.SA {
	gone := make(map[espplan.ID]bool, len(c.Delete))
	for _, s := range c.Delete {
		gone[s.ID()] = true
	}
	var out []espplan.SA
	for _, s := range have {
		if !gone[s.ID()] {
			out = append(out, s)
		}
	}
	return out
}

// seenFile holds, per peer host, the generation its receive SAs were
// made for: after a restart of this agent, a peer's new generation is
// still told from its old one. No keys.
func seenFile(dir, network string) string { return filepath.Join(dir, network+".esp-seen.json") }

func readSeen(dir, network string) map[string]uint32 {
	m := map[string]uint32{}
	if b, err := os.ReadFile(seenFile(dir, network)); err == nil {
		_ = json.Unmarshal(b, &m) // unreadable: as none (no resets)
	}
	return m
}

func writeSeen(dir, network string, m map[string]uint32) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	return state.WriteAtomic(seenFile(dir, network), b)
}

// summary is a changes' log line: counts and epochs, never keys.
func summary(c espplan.Changes) string {
	count := func(sas []espplan.SA, out bool) (n int, epochs []uint32) {
		set := map[uint32]bool{}
		for _, s := range sas {
			if s.Out == out {
				n++
				if s.Epoch != 0 {
					set[s.Epoch] = true
				}
			}
		}
		return n, slices.Sorted(maps.Keys(set))
	}
	ai, ae := count(c.Add, false)
	ao, aoe := count(c.Add, true)
	di, _ := count(c.Delete, false)
	do, _ := count(c.Delete, true)
	return fmt.Sprintf("SAs: +%d receive (epochs %v), +%d transmit (epochs %v), −%d receive, −%d transmit", ai, ae, ao, aoe, di, do)
}

// espStatus copies the encryption's figures into the status.
func (a *Agent) espStatus(now time.Time) {
	e := a.esp
	in, out := 0, 0
	for _, s := range e.have {
		if s.Out {
			out++
		} else {
			in++
		}
	}
	newest, _ := e.ring.Newest()
	a.st.update(func(s *status) {
		s.esp = true
		s.espIn, s.espOut, s.espEpoch, s.espKeyCreated, s.espRotations = in, out, newest.Epoch, newest.Created, e.rotations
	})
}
