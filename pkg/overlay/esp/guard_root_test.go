package esp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/netns"
)

const testVNI = 4242

// pair is two hosts on a lab underlay, each with a plain VXLAN device vx0
// (VNI 4242, port 4789) holding 10.99.0.<i>/24 and flooding to the other
// host: the encrypted overlay's wire without its agent.
type pair struct {
	u     *lab.Underlay
	h     [3]*lab.NS   // 1 and 2
	ns    [3]*netns.NS // the same, as package netns opens them
	spec  [3]Spec
	inner [3]netip.Addr // 10.99.0.<i>
	ctx   context.Context
}

func newPair(t *testing.T) *pair { return newPairWith(t, nil) }

// newPairWith is newPair calling before(i) on each host before its VXLAN
// device is made.
func newPairWith(t *testing.T, before func(p *pair, i int)) *pair {
	t.Helper()
	lab.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	u, err := lab.NewUnderlay(ctx, "besp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := u.Close(); err != nil {
			t.Error(err)
		}
	})
	p := &pair{u: u, ctx: ctx}
	for i := 1; i <= 2; i++ {
		if p.h[i], err = u.AddHost(ctx, i); err != nil {
			t.Fatal(err)
		}
		if p.ns[i], err = netns.Open(p.h[i].Path); err != nil {
			t.Fatal(err)
		}
		n := p.ns[i]
		t.Cleanup(func() { n.Close() })
		vtep := lab.HostAddr(i).Addr()
		p.spec[i] = Spec{Network: "ov-esp", VNI: testVNI, Port: 4789, VTEP: vtep, Reqid: 0xb0000000 | testVNI}
		p.inner[i] = netip.AddrFrom4([4]byte{10, 99, 0, byte(i)})
		if before != nil {
			before(p, i)
		}
		ul, err := n.Netlink().LinkByName(lab.HostUnderlayName)
		if err != nil {
			t.Fatal(err)
		}
		vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "vx0", MTU: 1400}, VxlanId: testVNI,
			SrcAddr: net.IP(vtep.AsSlice()), Port: 4789, VtepDevIndex: ul.Attrs().Index, Learning: false}
		if err := n.Netlink().LinkAdd(vx); err != nil {
			t.Fatal(err)
		}
		if err := p.h[i].AddAddr("vx0", netip.PrefixFrom(p.inner[i], 24)); err != nil {
			t.Fatal(err)
		}
		if err := p.h[i].LinkUp("vx0"); err != nil {
			t.Fatal(err)
		}
		peer := lab.HostAddr(3 - i).Addr()
		err = n.Netlink().NeighAppend(&netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE,
			State: netlink.NUD_PERMANENT, Flags: netlink.NTF_SELF, IP: net.IP(peer.AsSlice()), HardwareAddr: make(net.HardwareAddr, 6)})
		if err != nil {
			t.Fatalf("fdb 00:00:00:00:00:00 dst %s: %v", peer, err)
		}
	}
	return p
}

// ping sends one echo request from host i to host j's inner address.
func (p *pair) ping(i, j int) error {
	return p.h[i].PingOnce(p.ctx, p.inner[j], time.Second)
}

// clear counts, on host i's port of the underlay, the network's VXLAN
// from host i's VTEP: what must never be seen while its guard is up. The
// count is read after a marker (UDP to port 9 of the other host, sent
// after what is to be counted) has come through the capture, so that a
// zero is not a capture lagging behind.
func (p *pair) clear(t *testing.T, i int) (count func() int64, stop func()) {
	t.Helper()
	c, err := p.u.NS.OpenCapture(fmt.Sprintf("ulp%d", i))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(p.ctx)
	var n, markers atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		c.Each(ctx, func(f lab.Frame) bool {
			switch {
			case f.Proto != unix.IPPROTO_UDP || f.Src != lab.HostAddr(i).Addr():
			case f.DstPort == 4789 && f.VXLAN.VNI == testVNI:
				n.Add(1)
			case f.DstPort == 9:
				markers.Add(1)
			}
			return true
		})
	}()
	var sent int64
	count = func() int64 {
		t.Helper()
		sent++
		err := p.h[i].Do(func() error {
			c, err := net.Dial("udp4", netip.AddrPortFrom(lab.HostAddr(3-i).Addr(), 9).String())
			if err != nil {
				return err
			}
			defer c.Close()
			_, err = c.Write([]byte("marker"))
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(2 * time.Second); markers.Load() < sent; time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the capture on ulp%d did not see marker %d", i, sent)
			}
		}
		return n.Load()
	}
	return count, func() { cancel(); <-done; c.Close() }
}

// With the guard up and no SA (this kernel may have no ESP at all), the
// network's VXLAN neither leaves in the clear nor is taken in in the
// clear; with its xfrm policy flushed by hand, nftables still keeps it in;
// CheckGuard names what is missing and EnsureGuard puts it back without
// losing the counters; DeleteGuard lets the plain overlay work again.
func TestGuardFailsClosed(t *testing.T) {
	p := newPair(t)
	if err := p.ping(1, 2); err != nil {
		t.Fatalf("the plain overlay does not work, so nothing below would mean anything: %v", err)
	}
	sent, stop := p.clear(t, 1)
	defer stop()

	if err := EnsureGuard(p.ns[1], p.spec[1]); err != nil {
		t.Fatal(err)
	}
	base := sent()
	if err := p.ping(1, 2); err == nil {
		t.Fatal("h1 reached h2 in the clear with its guard up")
	}
	if err := p.ping(2, 1); err == nil {
		t.Fatal("h2's plain VXLAN reached h1's guarded device")
	}
	got, err := CheckGuard(p.ns[1], p.spec[1])
	if err != nil {
		t.Fatalf("CheckGuard after EnsureGuard: %v", err)
	}
	if got.In == 0 {
		t.Errorf("input drops %d after h2's plain VXLAN came in", got.In)
	}

	// The policy flushed by hand: nftables drops what would go out plain.
	if err := xfrm(t, p.ns[1]).XfrmPolicyFlush(); err != nil {
		t.Fatal(err)
	}
	// VXLAN caches its route to a peer: flush the route cache, so that
	// the next packet is routed plain and meets nftables, not a stale
	// route that still drops.
	if err := p.ns[1].WriteSysctl("ipv4/route/flush", "1"); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckGuard(p.ns[1], p.spec[1]); err == nil || !strings.Contains(err.Error(), "xfrm policy") {
		t.Errorf("CheckGuard with the policy gone = %v; want it named", err)
	}
	if err := p.ping(1, 2); err == nil {
		t.Fatal("h1 reached h2 in the clear with the policy flushed")
	}
	if n := sent() - base; n != 0 {
		t.Fatalf("%d plain VXLAN packets of the network left h1 with its guard up", n)
	}
	if c, _ := CheckGuard(p.ns[1], p.spec[1]); c.Out == 0 {
		t.Errorf("output drops %d after h1 tried to send with the policy flushed", c.Out)
	}

	// EnsureGuard repairs, and keeps the table (and its counters) that
	// was right.
	if err := EnsureGuard(p.ns[1], p.spec[1]); err != nil {
		t.Fatal(err)
	}
	after, err := CheckGuard(p.ns[1], p.spec[1])
	if err != nil || after.In < got.In {
		t.Fatalf("after the repair: %+v, %v; the counters were %+v", after, err, got)
	}

	// The table deleted by hand: named, and put back.
	if err := p.ns[1].WithNFT(func(c *nftables.Conn) error {
		c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: TableName(p.spec[1].Network)})
		return c.Flush()
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckGuard(p.ns[1], p.spec[1]); err == nil || !strings.Contains(err.Error(), "nftables table") {
		t.Errorf("CheckGuard with the table gone = %v; want it named", err)
	}
	if err := p.ping(1, 2); err == nil {
		t.Fatal("h1 reached h2 in the clear with only the policy up")
	}
	if n := sent() - base; n != 0 {
		t.Fatalf("%d plain VXLAN packets left h1 with only its policy up", n)
	}
	if err := EnsureGuard(p.ns[1], p.spec[1]); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckGuard(p.ns[1], p.spec[1]); err != nil {
		t.Fatal(err)
	}

	// Off: the network is plain again, and the capture sees it (so its
	// zero above was no blind spot).
	if removed, err := DeleteGuard(p.ns[1], p.spec[1]); err != nil || !removed {
		t.Fatalf("DeleteGuard = %v, %v", removed, err)
	}
	if removed, err := DeleteGuard(p.ns[1], p.spec[1]); err != nil || removed {
		t.Fatalf("DeleteGuard again = %v, %v; want nothing removed and no error", removed, err)
	}
	if err := p.ping(1, 2); err != nil {
		t.Fatalf("after DeleteGuard: %v", err)
	}
	if sent() == base {
		t.Fatal("the capture saw none of h1's plain VXLAN after the guard went")
	}
	if pols, err := xfrm(t, p.ns[1]).XfrmPolicyList(netlink.FAMILY_ALL); err != nil || len(pols) != 0 {
		t.Errorf("policies left: %v, %v", pols, err)
	}
}

// The guard matches the network's VNI and port only: another VXLAN on
// the same hosts is not touched.
func TestGuardIsTheNetworksOnly(t *testing.T) {
	p := newPair(t)
	other := p.spec[1]
	other.VNI, other.Network = 77, "ov-other"
	if err := EnsureGuard(p.ns[1], other); err != nil {
		t.Fatal(err)
	}
	// The policy is per port, so it holds back vx0's traffic too;
	// remove it and keep the other network's nftables rules only.
	if err := xfrm(t, p.ns[1]).XfrmPolicyFlush(); err != nil {
		t.Fatal(err)
	}
	if err := p.ping(1, 2); err != nil {
		t.Fatalf("VNI %d's rules dropped VNI %d: %v", other.VNI, testVNI, err)
	}
	if err := p.ping(2, 1); err != nil {
		t.Fatalf("VNI %d's rules dropped VNI %d coming in: %v", other.VNI, testVNI, err)
	}
}

// Probe agrees with iproute2 on whether this kernel holds an
// rfc4106(gcm(aes)) SA with ESN, and names what is missing when not.
func TestProbe(t *testing.T) {
	lab.RequireRoot(t)
	h, err := lab.NewNS(context.Background(), "bespp-"+lab.RandomSuffix(8))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Delete()
	n, err := netns.Open(h.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	perr := Probe(n)
	out, ierr := exec.Command("ip", "-n", h.Name, "xfrm", "state", "add", "src", "127.0.0.1", "dst", "127.0.0.3",
		"proto", "esp", "spi", "0x1234", "mode", "transport", "flag", "esn", "replay-window", "1024",
		"aead", AEAD, "0x"+strings.Repeat("11", 20), "128").CombinedOutput()
	t.Logf("Probe: %v; ip xfrm state add: %v %s", perr, ierr, out)
	switch {
	case perr == nil && ierr != nil:
		t.Fatalf("Probe found ESP where iproute2 could not add an SA: %s", out)
	case perr != nil && ierr == nil:
		t.Fatalf("Probe = %v, but iproute2 added an SA", perr)
	case perr != nil:
		if !errors.Is(perr, ErrUnsupported) || !strings.Contains(perr.Error(), "CONFIG_") {
			t.Fatalf("Probe = %v; want ErrUnsupported naming the kernel option", perr)
		}
	}
	// The probe leaves nothing.
	if sts, err := xfrm(t, n).XfrmStateList(netlink.FAMILY_ALL); err != nil || len(sts) > 1 {
		t.Fatalf("states after the probe (and iproute2's one): %v, %v", sts, err)
	}
}

func xfrm(t *testing.T, n *netns.NS) *netlink.Handle {
	t.Helper()
	h, err := n.Xfrm()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
