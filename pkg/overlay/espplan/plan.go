package espplan

import (
	"bytes"
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// SA is one security association a host's kernel is to hold: ESP in
// transport mode, rfc4106(gcm(aes)) with a 16-byte ICV, ESN and a replay
// window (package esp fills in what every SA shares).
type SA struct {
	Out      bool // this host's, transmitting to Dst; else receiving from Src
	Src, Dst netip.Addr
	SPI      uint32
	Epoch    uint32
	Key      []byte // SAKeySize bytes; never printed
}

// ID is what the kernel keys an SA by (with the protocol, always ESP).
type ID struct {
	Dst netip.Addr
	SPI uint32
}

func (s SA) ID() ID { return ID{s.Dst, s.SPI} }

// String is the SA as `ip xfrm state` would show its identity, without
// the key.
func (s SA) String() string {
	dir := "in"
	if s.Out {
		dir = "out"
	}
	return fmt.Sprintf("%s src %s dst %s spi 0x%08x epoch %d", dir, s.Src, s.Dst, s.SPI, s.Epoch)
}

// Same reports whether the kernel's a is s: same identity, ends and key.
func (s SA) Same(a SA) bool {
	return s.ID() == a.ID() && s.Src == a.Src && s.Out == a.Out && bytes.Equal(s.Key, a.Key)
}

// Peer is another host of the network as the plan needs it.
type Peer struct {
	Host
	State State // what it published (zero: nothing yet)
	// Synced: it has this host's lease in its kernel (it acknowledged
	// this host's last Acquire), so it has receive SAs for it up to
	// State.Rx. Until then nothing is sent to it.
	Synced bool
	// Tx is the epoch this host transmits to it with now (0: none): kept
	// while Synced is false (a new Acquire of this host's lease that the
	// peer has not yet acknowledged), so the traffic goes on.
	Tx uint32
}

// Plan is what one host's kernel is to hold, and what it can publish once
// the kernel holds it.
type Plan struct {
	SAs   []SA  // receive SAs first, then transmit SAs; each sorted by peer
	State State // this host's State once SAs are installed
}

// PlanSAs plans self's SAs in network for ring and its peers: from every
// peer, a receive SA for each ring key; to every peer that is Synced, a
// transmit SA with the newest ring key it can receive (State.Rx), or the
// key it is sent with now when it has not acknowledged this host's lease
// yet; to a peer that can receive no ring key, none (its traffic is
// blocked by the policy, never sent in the clear).
func PlanSAs(network string, self Host, peers []Peer, ring Ring) (Plan, error) {
	peers = slices.SortedFunc(slices.Values(peers), func(a, b Peer) int { return a.VTEP.Compare(b.VTEP) })
	var in, out []SA
	var st State
	if n, ok := ring.Newest(); ok {
		st.Rx = n.Epoch
	}
	for _, p := range peers {
		for _, k := range ring.Keys {
			key, err := SAKey(network, k, p.Host, self)
			if err != nil {
				return Plan{}, err
			}
			in = append(in, SA{Src: p.VTEP, Dst: self.VTEP, SPI: SPI(p.Host, k.Epoch), Epoch: k.Epoch, Key: key})
		}
		e := txEpoch(ring, p)
		if e == 0 {
			continue
		}
		k, _ := ring.Key(e)
		key, err := SAKey(network, k, self, p.Host)
		if err != nil {
			return Plan{}, err
		}
		out = append(out, SA{Out: true, Src: self.VTEP, Dst: p.VTEP, SPI: SPI(self, e), Epoch: e, Key: key})
		if st.Tx == 0 || e < st.Tx {
			st.Tx = e
		}
	}
	sas := append(in, out...)
	if err := checkUnique(sas); err != nil {
		return Plan{}, err
	}
	return Plan{SAs: sas, State: st}, nil
}

// txEpoch is the ring key self transmits to p with, 0 for none.
func txEpoch(ring Ring, p Peer) uint32 {
	if !p.Synced {
		if _, ok := ring.Key(p.Tx); ok {
			return p.Tx
		}
		return 0
	}
	var e uint32
	for _, k := range ring.Keys {
		if k.Epoch <= p.State.Rx {
			e = k.Epoch
		}
	}
	return e
}

// checkUnique refuses a plan with two SAs of one identity: two peers of
// one VTEP, or of one subnet index (two leases of a subnet).
func checkUnique(sas []SA) error {
	seen := make(map[ID]SA, len(sas))
	for _, s := range sas {
		if o, ok := seen[s.ID()]; ok {
			return fmt.Errorf("two SAs with dst %s spi 0x%08x (%s; %s): two peers share a VTEP or a subnet", s.Dst, s.SPI, o, s)
		}
		seen[s.ID()] = s
	}
	return nil
}

// ResetFrom is the changes that make every receive SA from vtep again
// (deleted and added, so the kernel starts a fresh replay window): what a
// host does when that peer published a new State.Gen.
func ResetFrom(sas []SA, vtep netip.Addr) Changes {
	var c Changes
	for _, s := range sas {
		if !s.Out && s.Src == vtep {
			c.Delete = append(c.Delete, s)
			c.Add = append(c.Add, s)
		}
	}
	return c
}

// Changes is what turns the kernel's SAs into a plan's.
type Changes struct {
	Add, Delete []SA
}

// Diff compares the kernel's berth SAs (have) with the plan's (want): an
// SA whose identity is in both but whose ends or key differ is deleted and
// added again. Add lists receive SAs before transmit SAs and Delete
// transmit SAs before receive SAs, the order to apply them in: a host can
// receive with a key before any peer sends with it, and stops sending
// with one before it stops receiving.
func Diff(have, want []SA) Changes {
	wantBy := make(map[ID]SA, len(want))
	for _, s := range want {
		wantBy[s.ID()] = s
	}
	haveBy := make(map[ID]SA, len(have))
	var c Changes
	for _, h := range have {
		haveBy[h.ID()] = h
		if w, ok := wantBy[h.ID()]; !ok || !w.Same(h) {
			c.Delete = append(c.Delete, h)
		}
	}
	for _, w := range want {
		if h, ok := haveBy[w.ID()]; !ok || !w.Same(h) {
			c.Add = append(c.Add, w)
		}
	}
	order := func(outFirst bool) func(a, b SA) int {
		return func(a, b SA) int {
			if a.Out != b.Out {
				if a.Out == outFirst {
					return -1
				}
				return 1
			}
			return cmp.Or(a.Dst.Compare(b.Dst), a.Src.Compare(b.Src), cmp.Compare(a.SPI, b.SPI))
		}
	}
	slices.SortStableFunc(c.Add, order(false))
	slices.SortStableFunc(c.Delete, order(true))
	return c
}

// Empty reports whether there is nothing to change.
func (c Changes) Empty() bool { return len(c.Add) == 0 && len(c.Delete) == 0 }

// Step is one kernel request: add SA, or delete it.
type Step struct {
	Delete bool
	SA     SA
}

func (s Step) String() string {
	if s.Delete {
		return "- " + s.SA.String()
	}
	return "+ " + s.SA.String()
}

// Steps orders the changes for the kernel: the adds (receive SAs first),
// each preceded by the delete of an SA it replaces (one identity cannot
// be held twice), then the other deletes (transmit SAs first). So a
// transmit SA's successor is in place before it goes, and no packet meets
// a moment without one.
func (c Changes) Steps() []Step {
	replaced := make(map[ID]SA, len(c.Delete))
	for _, d := range c.Delete {
		replaced[d.ID()] = d
	}
	steps := make([]Step, 0, len(c.Add)+len(c.Delete))
	for _, a := range c.Add {
		if d, ok := replaced[a.ID()]; ok {
			steps = append(steps, Step{Delete: true, SA: d})
			delete(replaced, a.ID())
		}
		steps = append(steps, Step{SA: a})
	}
	for _, d := range c.Delete {
		if _, ok := replaced[d.ID()]; ok {
			steps = append(steps, Step{Delete: true, SA: d})
		}
	}
	return steps
}

// String is the steps one per line, keys left out.
func (c Changes) String() string {
	var b strings.Builder
	for _, s := range c.Steps() {
		b.WriteString(s.String())
		b.WriteByte('\n')
	}
	return b.String()
}
