package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// Ping sends ICMP echo requests from this namespace to dst, one every
// 200 ms, until a matching reply arrives (nil) or ctx ends (an error naming
// what was sent). It uses a raw socket opened on a thread in the namespace,
// so it needs root but no ping binary.
//
// Equivalent: ip netns exec $ns ping -c1 -w$timeout $dst
func (n *NS) Ping(ctx context.Context, dst netip.Addr) error {
	dst = dst.Unmap()
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var conn *icmp.PacketConn
	err := n.Do(func() error {
		var err error
		conn, err = icmp.ListenPacket(network, listen)
		return err
	})
	if err != nil {
		return fmt.Errorf("ping %s from %s: open raw socket: %w", dst, n.Name, err)
	}
	defer conn.Close()

	id := int(randUint16())
	target := &net.IPAddr{IP: dst.AsSlice()}
	got := make(chan struct{})
	readErr := make(chan error, 1)
	go func() {
		buf := make([]byte, 1500)
		for {
			nr, peer, err := conn.ReadFrom(buf)
			if err != nil {
				readErr <- err
				return
			}
			m, err := icmp.ParseMessage(proto, buf[:nr])
			if err != nil || m.Type != replyType {
				continue
			}
			e, ok := m.Body.(*icmp.Echo)
			if !ok || e.ID != id {
				continue
			}
			if pa, ok := peer.(*net.IPAddr); !ok || !pa.IP.Equal(target.IP) {
				continue
			}
			close(got)
			return
		}
	}()

	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	var lastSendErr error
	sent := 0
	for seq := 1; ; seq++ {
		msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq, Data: []byte("berth-lab")}}
		b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo(b, target); err != nil {
			lastSendErr = err
		} else {
			sent++
		}
		select {
		case <-got:
			return nil
		case err := <-readErr:
			return fmt.Errorf("ping %s from %s: read: %w", dst, n.Name, err)
		case <-ctx.Done():
			if lastSendErr != nil {
				return fmt.Errorf("ping %s from %s: no reply to %d echo requests (last send error: %v)", dst, n.Name, sent, lastSendErr)
			}
			return fmt.Errorf("ping %s from %s: no reply to %d echo requests", dst, n.Name, sent)
		case <-tick.C:
		}
	}
}

// PingWithin is Ping with a timeout.
func (n *NS) PingWithin(ctx context.Context, dst netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return n.Ping(ctx, dst)
}

// randUint16 returns a random 16-bit number (an ICMP echo id).
func randUint16() uint16 {
	var b [2]byte
	if _, err := randRead(b[:]); err != nil {
		panic(err)
	}
	return uint16(b[0])<<8 | uint16(b[1])
}

// Listener is a TCP listener in a namespace that records the remote address
// of every connection it accepts (to show masquerade: the outside sees the
// host's address, not the container's).
type Listener struct {
	ln    net.Listener
	Addr  netip.AddrPort
	conns chan netip.AddrPort
	wg    sync.WaitGroup
}

// ListenTCP opens a TCP listener on addr (port 0 picks one) in this
// namespace. Each accepted connection gets a line "hello <remote>\n" and is
// closed; its remote address is sent on Accepted.
//
// Equivalent: ip netns exec $ns nc -l $addr $port
func (n *NS) ListenTCP(addr netip.AddrPort) (*Listener, error) {
	var ln net.Listener
	err := n.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, n.Name, err)
	}
	l := &Listener{ln: ln, conns: make(chan netip.AddrPort, 64)}
	l.Addr = ln.Addr().(*net.TCPAddr).AddrPort()
	l.wg.Add(1)
	go l.serve()
	return l, nil
}

func (l *Listener) serve() {
	defer l.wg.Done()
	defer close(l.conns)
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		remote := c.RemoteAddr().(*net.TCPAddr).AddrPort()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = fmt.Fprintf(c, "hello %s\n", remote)
		_ = c.Close()
		select {
		case l.conns <- netip.AddrPortFrom(remote.Addr().Unmap(), remote.Port()):
		default:
		}
	}
}

// Accepted returns the remote address of the next accepted connection, or
// an error when ctx ends first.
func (l *Listener) Accepted(ctx context.Context) (netip.AddrPort, error) {
	select {
	case a, ok := <-l.conns:
		if !ok {
			return netip.AddrPort{}, errors.New("listener closed")
		}
		return a, nil
	case <-ctx.Done():
		return netip.AddrPort{}, fmt.Errorf("no connection accepted on %s: %w", l.Addr, ctx.Err())
	}
}

// Close stops the listener.
func (l *Listener) Close() error {
	err := l.ln.Close()
	l.wg.Wait()
	return err
}

// DialTCP connects from this namespace to dst and returns the first line
// the peer sends (a Listener sends "hello <remote>").
//
// Equivalent: ip netns exec $ns nc $addr $port
func (n *NS) DialTCP(ctx context.Context, dst netip.AddrPort) (string, error) {
	var c net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, "tcp", dst.String())
		return err
	})
	if err != nil {
		return "", fmt.Errorf("dial %s from %s: %w", dst, n.Name, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	} else {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	}
	buf := make([]byte, 256)
	var line []byte
	for {
		nr, err := c.Read(buf)
		line = append(line, buf[:nr]...)
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			return string(line[:i]), nil
		}
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				return string(line), fmt.Errorf("read from %s (from %s): %w", dst, n.Name, err)
			}
			return string(line), nil
		}
	}
}
