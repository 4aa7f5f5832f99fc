package esp

import (
	"bytes"
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/overlay/espplan"
)

// The tests of this file need ESP with rfc4106(gcm(aes)): this machine's
// kernel lacks it; make test-vm runs them in Debian's.

func (p *pair) host(i int) espplan.Host {
	return espplan.Host{Name: fmt.Sprintf("h%d", i), VTEP: p.spec[i].VTEP, Index: uint32(i)}
}

// install plans host i's SAs with ring and the other host's State, and
// applies them over what the kernel holds; it returns the plan.
func (p *pair) install(t *testing.T, i int, ring espplan.Ring, peerRx uint32) espplan.Plan {
	t.Helper()
	j := 3 - i
	plan, err := espplan.PlanSAs("ov-esp", p.host(i), []espplan.Peer{{Host: p.host(j), State: espplan.State{Rx: peerRx}, Synced: true}}, ring)
	if err != nil {
		t.Fatal(err)
	}
	have, err := ListSAs(p.ns[i], p.spec[i])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Apply(p.ns[i], p.spec[i], espplan.Diff(have, plan.SAs)); err != nil {
		t.Fatal(err)
	}
	return plan
}

func ringOf(epochs ...uint32) espplan.Ring {
	var r espplan.Ring
	for _, e := range epochs {
		r.Keys = append(r.Keys, espplan.Key{Epoch: e, Secret: bytes.Repeat([]byte{byte(e)}, espplan.KeySize), Created: time.Now()})
	}
	return r
}

// protos counts, on host i's underlay port, its ESP packets and its
// network's plain VXLAN, read after a marker as clear() does.
func (p *pair) protos(t *testing.T, i int) (esp, plain func() int64, stop func()) {
	t.Helper()
	c, err := p.u.NS.OpenCapture(fmt.Sprintf("ulp%d", i))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	var nESP, nPlain atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Each(ctx, func(f lab.Frame) bool {
			if f.Src != lab.HostAddr(i).Addr() {
				return true
			}
			switch {
			case f.Proto == unix.IPPROTO_ESP:
				nESP.Add(1)
			case f.Proto == unix.IPPROTO_UDP && f.DstPort == 4789:
				nPlain.Add(1)
			}
			return true
		})
	}()
	time.Sleep(50 * time.Millisecond)
	settle := func() { time.Sleep(100 * time.Millisecond) } // the capture reads every frame within its 100 ms poll
	return func() int64 { settle(); return nESP.Load() }, func() int64 { settle(); return nPlain.Load() }, func() { cancel(); <-done; c.Close() }
}

// With both hosts' guards and SAs in, the overlay carries traffic, and the
// underlay sees only ESP of it; the kernel's SAs read back as planned.
func TestSAsCarryTheOverlayInESP(t *testing.T) {
	lab.RequireKernel(t, lab.KernelESP)
	p := newPairWith(t, func(p *pair, i int) {
		if err := EnsureGuard(p.ns[i], p.spec[i]); err != nil {
			t.Fatal(err)
		}
	})
	espN, plain, stop := p.protos(t, 1)
	defer stop()
	ring := ringOf(1)
	plans := [3]espplan.Plan{1: p.install(t, 1, ring, 1), 2: p.install(t, 2, ring, 1)}
	if err := p.ping(1, 2); err != nil {
		t.Fatalf("over ESP: %v", err)
	}
	if err := p.ping(2, 1); err != nil {
		t.Fatalf("over ESP, the other way: %v", err)
	}
	if n := espN(); n == 0 {
		t.Fatal("no ESP from h1 on the underlay")
	}
	if n := plain(); n != 0 {
		t.Fatalf("%d plain VXLAN packets from h1", n)
	}
	for i := 1; i <= 2; i++ {
		have, err := ListSAs(p.ns[i], p.spec[i])
		if err != nil {
			t.Fatal(err)
		}
		if c := espplan.Diff(have, plans[i].SAs); !c.Empty() {
			t.Errorf("h%d's kernel differs from its plan:\n%s", i, c)
		}
	}
}

// A switch of the transmit key (the peer has the new one) loses no
// packet of a ping every 10 ms; the old key's receive SA goes after.
func TestKeySwitchLosesNothing(t *testing.T) {
	lab.RequireKernel(t, lab.KernelESP)
	p := newPairWith(t, func(p *pair, i int) {
		if err := EnsureGuard(p.ns[i], p.spec[i]); err != nil {
			t.Fatal(err)
		}
	})
	p.install(t, 1, ringOf(1), 1)
	p.install(t, 2, ringOf(1), 1)
	ctx, cancel := context.WithCancel(p.ctx)
	type count struct{ sent, answered int }
	got := make(chan count, 1)
	go func() {
		s, a, err := p.h[1].PingStream(ctx, p.inner[2], 10*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		got <- count{s, a}
	}()
	time.Sleep(300 * time.Millisecond)
	// Both receive with 2, then each sends with 2, then 1 goes: the
	// order the agents' acknowledgements give.
	p.install(t, 1, ringOf(1, 2), 1)
	p.install(t, 2, ringOf(1, 2), 1)
	time.Sleep(200 * time.Millisecond)
	p.install(t, 1, ringOf(1, 2), 2)
	p.install(t, 2, ringOf(1, 2), 2)
	time.Sleep(200 * time.Millisecond)
	p.install(t, 1, ringOf(2), 2)
	p.install(t, 2, ringOf(2), 2)
	time.Sleep(300 * time.Millisecond)
	cancel()
	c := <-got
	if c.sent < 50 || c.answered != c.sent {
		t.Fatalf("%d of %d echo requests lost across the key switch", c.sent-c.answered, c.sent)
	}
	t.Logf("%d echo requests across the switch, none lost", c.sent)
	have, _ := ListSAs(p.ns[1], p.spec[1])
	for _, s := range have {
		if s.SPI>>24&0xf == 1 {
			t.Errorf("an SA of epoch 1 is left: %s", s)
		}
	}
}

// A host with another key (a wrong ring) cannot reach in, and what it
// sends is dropped by the receiver's SA (an integrity failure), never
// delivered; nothing crosses in the clear.
func TestWrongKeyReachesNothing(t *testing.T) {
	lab.RequireKernel(t, lab.KernelESP)
	p := newPairWith(t, func(p *pair, i int) {
		if err := EnsureGuard(p.ns[i], p.spec[i]); err != nil {
			t.Fatal(err)
		}
	})
	_, plain, stop := p.protos(t, 1)
	defer stop()
	p.install(t, 1, ringOf(1), 1)
	wrong := ringOf(1)
	wrong.Keys[0].Secret = bytes.Repeat([]byte{0x99}, espplan.KeySize)
	p.install(t, 2, wrong, 1)
	before, _ := XfrmStats(p.ns[2])
	if err := p.ping(1, 2); err == nil {
		t.Fatal("h1 reached h2, which holds another key")
	}
	after, _ := XfrmStats(p.ns[2])
	if after["XfrmInStateProtoError"] <= before["XfrmInStateProtoError"] {
		t.Errorf("h2's XfrmInStateProtoError did not move (%d → %d): the packets were not refused by the SA", before["XfrmInStateProtoError"], after["XfrmInStateProtoError"])
	}
	if n := plain(); n != 0 {
		t.Fatalf("%d plain VXLAN packets from h1", n)
	}
}

// An SA deleted by hand stops the traffic it carried (blocked, never sent
// in the clear). Put back with its SPI, it starts its sequence numbers
// again, and the peer's receive SA, whose replay window is far ahead,
// refuses them: the peer must make its receive SA again (what the agent's
// State.Gen asks of it), and then the traffic flows.
func TestDeletedSABlocksThenComesBack(t *testing.T) {
	lab.RequireKernel(t, lab.KernelESP)
	p := newPairWith(t, func(p *pair, i int) {
		if err := EnsureGuard(p.ns[i], p.spec[i]); err != nil {
			t.Fatal(err)
		}
	})
	_, plain, stop := p.protos(t, 1)
	defer stop()
	plan := p.install(t, 1, ringOf(1), 1)
	peer := p.install(t, 2, ringOf(1), 1)
	for range 20 { // move h2's replay window on
		if err := p.ping(1, 2); err != nil {
			t.Fatal(err)
		}
	}
	var out, in espplan.SA
	for _, s := range plan.SAs {
		if s.Out {
			out = s
		}
	}
	for _, s := range peer.SAs {
		if !s.Out {
			in = s
		}
	}
	if _, err := Apply(p.ns[1], p.spec[1], espplan.Changes{Delete: []espplan.SA{out}}); err != nil {
		t.Fatal(err)
	}
	if err := p.ping(1, 2); err == nil {
		t.Fatal("h1 reached h2 without its transmit SA")
	}
	if n := plain(); n != 0 {
		t.Fatalf("%d plain VXLAN packets from h1 without its SA", n)
	}
	p.install(t, 1, ringOf(1), 1)
	if err := p.ping(1, 2); err == nil {
		t.Fatal("h2's receive SA took h1's restarted sequence numbers: the replay window is not doing its work, and State.Gen would be needless")
	}
	// h2 makes its receive SA again: a fresh replay window.
	if _, err := Apply(p.ns[2], p.spec[2], espplan.Changes{Delete: []espplan.SA{in}, Add: []espplan.SA{in}}); err != nil {
		t.Fatal(err)
	}
	if err := p.ping(1, 2); err != nil {
		t.Fatalf("after h2 made its receive SA again: %v", err)
	}
	if n := plain(); n != 0 {
		t.Fatalf("%d plain VXLAN packets from h1", n)
	}
}
