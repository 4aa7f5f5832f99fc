package agent

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
)

// The overlay's packets on the underlay are VXLAN in UDP to port 4789
// between the hosts' VTEPs, with the configured VNI, carrying the
// containers' network's packets.
func TestAgentVXLANOnTheWire(t *testing.T) {
	c := newCluster(t)
	const vni = 4242
	vni4242 := func(cfg *Config) { cfg.Network.VNI = vni }
	c.start(1, vni4242)
	c.start(2, vni4242)
	l1, l2 := c.waitReady(1), c.waitReady(2)
	c.waitPeers(1, 2)
	c.waitPeers(2, 1)

	// Any frame on h1's port of the underlay bridge that carries an inner
	// packet from h1's device to h2's.
	capt, err := c.u.NS.OpenCapture("ulp1")
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		f   lab.Frame
		err error
	}
	got := make(chan result, 1)
	go func() {
		f, err := capt.Next(ctx, func(f lab.Frame) bool {
			return f.VXLAN.InnerSrc == l1.Subnet.Addr() && f.VXLAN.InnerDst == l2.Subnet.Addr()
		})
		got <- result{f, err}
	}()
	c.ping(1, 2)
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := lab.Frame{
		IPv4: true, Src: lab.HostAddr(1).Addr(), Dst: lab.HostAddr(2).Addr(), Proto: unix.IPPROTO_UDP, DstPort: 4789,
		VXLAN: lab.VXLANFrame{Inner: true, Flags: 0x08, VNI: vni, InnerSrc: l1.Subnet.Addr(), InnerDst: l2.Subnet.Addr(), InnerProto: unix.IPPROTO_ICMP},
	}
	if r.f != want {
		t.Fatalf("on the wire: %+v\nwant %+v", r.f, want)
	}
}
