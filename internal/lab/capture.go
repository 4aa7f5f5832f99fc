package lab

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// Frame is one Ethernet frame seen on a link, decoded as far as the tests
// look: the outer IPv4 header, UDP's destination port, and for VXLAN its
// flags, VNI and the inner IPv4 packet's ends and protocol.
type Frame struct {
	IPv4     bool
	Src, Dst netip.Addr
	Proto    byte   // IP protocol: unix.IPPROTO_UDP, 50 for ESP, …
	DstPort  uint16 // UDP only
	VXLAN    VXLANFrame
}

// VXLANFrame is the VXLAN part of a Frame; Inner is false when the
// frame is not UDP carrying Ethernet/IPv4 (or too short for it).
type VXLANFrame struct {
	Inner              bool
	Flags              byte
	VNI                uint32
	InnerSrc, InnerDst netip.Addr
	InnerProto         byte
}

// ParseFrame decodes an Ethernet frame (Frame.IPv4 false for anything but
// IPv4).
func ParseFrame(b []byte) Frame {
	var f Frame
	if len(b) < 14 || binary.BigEndian.Uint16(b[12:14]) != unix.ETH_P_IP {
		return f
	}
	src, dst, proto, payload, ok := parseIPv4(b[14:])
	if !ok {
		return f
	}
	f.IPv4, f.Src, f.Dst, f.Proto = true, src, dst, proto
	if proto != unix.IPPROTO_UDP || len(payload) < 8 {
		return f
	}
	f.DstPort = binary.BigEndian.Uint16(payload[2:4])
	if len(payload) < 8+8+14 {
		return f
	}
	vx, inner := payload[8:16], payload[16:]
	if binary.BigEndian.Uint16(inner[12:14]) != unix.ETH_P_IP {
		return f
	}
	isrc, idst, iproto, _, ok := parseIPv4(inner[14:])
	if !ok {
		return f
	}
	f.VXLAN = VXLANFrame{Inner: true, Flags: vx[0], VNI: uint32(vx[4])<<16 | uint32(vx[5])<<8 | uint32(vx[6]),
		InnerSrc: isrc, InnerDst: idst, InnerProto: iproto}
	return f
}

func parseIPv4(b []byte) (src, dst netip.Addr, proto byte, payload []byte, ok bool) {
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

// Capture is an AF_PACKET socket bound to one link of a namespace: every
// frame the link sends or receives.
type Capture struct {
	fd   int
	name string
}

// OpenCapture opens a capture on link ifname of n.
//
// Equivalent: ip netns exec $n tcpdump -i $ifname -nn
func (n *NS) OpenCapture(ifname string) (*Capture, error) {
	// htons: the protocol goes in network byte order.
	proto := int(binary.NativeEndian.Uint16(binary.BigEndian.AppendUint16(nil, unix.ETH_P_ALL)))
	c := &Capture{fd: -1, name: ifname + " in " + n.Name}
	err := n.Do(func() error {
		ifi, err := net.InterfaceByName(ifname)
		if err != nil {
			return err
		}
		if c.fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto); err != nil {
			return err
		}
		tv := unix.Timeval{Usec: 100_000} // reads return so that ctx is checked
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

// Close closes the socket.
func (c *Capture) Close() error { return unix.Close(c.fd) }

// Next returns the first frame for which match holds, or an error when
// ctx ends first.
func (c *Capture) Next(ctx context.Context, match func(Frame) bool) (Frame, error) {
	var found Frame
	err := c.Each(ctx, func(f Frame) bool {
		if match(f) {
			found = f
			return false
		}
		return true
	})
	if err == nil {
		return found, nil
	}
	return Frame{}, fmt.Errorf("capture on %s: no matching frame: %w", c.name, err)
}

// Each calls fn with every frame until fn returns false (Each returns nil)
// or ctx ends (Each returns ctx's error).
func (c *Capture) Each(ctx context.Context, fn func(Frame) bool) error {
	buf := make([]byte, 65536)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(c.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("capture on %s: %w", c.name, err)
		}
		if !fn(ParseFrame(buf[:n])) {
			return nil
		}
	}
	return ctx.Err()
}
