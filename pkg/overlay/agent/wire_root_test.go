package agent

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
)

// vxlanFrame is what the underlay saw of one encapsulated packet.
type vxlanFrame struct {
	OuterSrc, OuterDst netip.Addr
	DstPort            uint16
	Flags              byte
	VNI                uint32
	InnerSrc, InnerDst netip.Addr
	InnerProto         byte
}

// parseVXLAN decodes an Ethernet frame carrying IPv4/UDP/VXLAN/Ethernet/
// IPv4; ok is false for anything else.
func parseVXLAN(b []byte) (f vxlanFrame, ok bool) {
	ipv4 := func(b []byte) (src, dst netip.Addr, proto byte, payload []byte, ok bool) {
		if len(b) < 20 || b[0]>>4 != 4 {
			return src, dst, 0, nil, false
		}
		ihl := int(b[0]&0x0f) * 4
		if ihl < 20 || len(b) < ihl {
			return src, dst, 0, nil, false
		}
		src, _ = netip.AddrFromSlice(b[12:16])
		dst, _ = netip.AddrFromSlice(b[16:20])
		return src, dst, b[9], b[ihl:], true
	}
	if len(b) < 14 || binary.BigEndian.Uint16(b[12:14]) != unix.ETH_P_IP {
		return f, false
	}
	src, dst, proto, udp, ok := ipv4(b[14:])
	if !ok || proto != unix.IPPROTO_UDP || len(udp) < 8+8+14 {
		return f, false
	}
	f.OuterSrc, f.OuterDst = src, dst
	f.DstPort = binary.BigEndian.Uint16(udp[2:4])
	vx := udp[8:16]
	f.Flags = vx[0]
	f.VNI = uint32(vx[4])<<16 | uint32(vx[5])<<8 | uint32(vx[6])
	inner := udp[16:]
	if binary.BigEndian.Uint16(inner[12:14]) != unix.ETH_P_IP {
		return f, false
	}
	f.InnerSrc, f.InnerDst, f.InnerProto, _, ok = ipv4(inner[14:])
	return f, ok
}

// capture is an AF_PACKET socket bound to one link.
type capture struct {
	fd   int
	name string
}

// openCapture opens a capture on link ifname of ns.
//
// Equivalent: ip netns exec $ns tcpdump -i $ifname -nn
func openCapture(ns *lab.NS, ifname string) (*capture, error) {
	// htons: the protocol goes in network byte order.
	proto := int(binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, unix.ETH_P_ALL)))
	c := &capture{fd: -1, name: ifname + " in " + ns.Name}
	err := ns.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		if c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		tv := unix.Timeval{Usec: 200_000} // reads return so that ctx is checked
		if err := unix.SetsockoptTimeval(c.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(c.fd, &unix.SockaddrLinklayer{Protocol: uint16(proto), Ifindex: ifi.Index})
	})
	if err != nil {
		if c.fd >= 0 {
			unix.Close(c.fd)
		}
		return nil, fmt.Errorf("capture on %s: %w", c.name, err)
	}
	return c, nil
}

func (c *capture) Close() error { return unix.Close(c.fd) }

// next returns the first VXLAN frame for which match holds, or an error
// when ctx ends first.
func (c *capture) next(ctx context.Context, match func(vxlanFrame) bool) (vxlanFrame, error) {
	buf := make([]byte, 65536)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return vxlanFrame{}, fmt.Errorf("capture on %s: %w", c.name, err)
		}
		if f, ok := parseVXLAN(buf[:n]); ok && match(f) {
			return f, nil
		}
	}
	return vxlanFrame{}, fmt.Errorf("capture on %s: no matching frame: %w", c.name, ctx.Err())
}

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
	capt, err := openCapture(c.u.NS, "ulp1")
	if err != nil {
		t.Fatal(err)
	}
	defer capt.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type result struct {
		f   vxlanFrame
		err error
	}
	got := make(chan result, 1)
	go func() {
		f, err := capt.next(ctx, func(f vxlanFrame) bool {
			return f.InnerSrc == l1.Subnet.Addr() && f.InnerDst == l2.Subnet.Addr()
		})
		got <- result{f, err}
	}()
	c.ping(1, 2)
	r := <-got
	if r.err != nil {
		t.Fatal(r.err)
	}
	want := vxlanFrame{
		OuterSrc: lab.HostAddr(1).Addr(), OuterDst: lab.HostAddr(2).Addr(), DstPort: 4789,
		Flags: 0x08, VNI: vni, InnerSrc: l1.Subnet.Addr(), InnerDst: l2.Subnet.Addr(), InnerProto: unix.IPPROTO_ICMP,
	}
	if r.f != want {
		t.Fatalf("on the wire: %+v\nwant %+v", r.f, want)
	}
}
