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

	"syscall"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// Ping sends ICMP echo requests from this namespace to dst, one every
// 200 ms, until a matching reply arrives (nil) or ctx ends (an error naming
// what was sent). It uses a raw socket opened on a thread in the namespace,
// so it needs root but no ping binary.
//
// Equivalent: ip netns exec $ns ping -c1 -w$timeout $dst
func (n *NS) Ping(ctx context.Context, dst netip.Addr) error {
	return n.PingWith(ctx, dst, PingOptions{})
}

// PingOptions shape the echo requests of PingWith.
type PingOptions struct {
	// Size is the whole IP packet's size in bytes; 0: a small packet.
	Size int
	// DF forbids fragmenting the requests (IPv4 DF bit; on IPv6, no
	// fragmenting by this host): a request bigger than the path MTU known
	// here fails to send with EMSGSIZE, one bigger than a later link's is
	// dropped there.
	DF bool
	// Once sends exactly one request, as a user's `ping -c1` does: no
	// retry hides a lost first packet. An ICMP error that comes back for
	// it (destination unreachable: no route yet) fails at once, naming it;
	// no answer fails when ctx ends.
	Once bool
}

// ErrUnreachable is returned (wrapped) by a Once ping answered with an
// ICMP destination unreachable.
var ErrUnreachable = errors.New("destination unreachable")

// ErrMsgSize is returned (wrapped) by PingWith when the kernel refuses to
// send a DF request bigger than the route's MTU.
var ErrMsgSize = unix.EMSGSIZE

// PingWith is Ping with requests shaped by o.
//
// Equivalent: ip netns exec $ns ping -c1 -M do -s $((o.Size-28)) $dst
func (n *NS) PingWith(ctx context.Context, dst netip.Addr, o PingOptions) error {
	dst = dst.Unmap()
	network, listen, proto, hdr := "ip4:icmp", "0.0.0.0", 1, 20+8
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, listen, proto, hdr = "ip6:ipv6-icmp", "::", 58, 40+8
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	payload := []byte("berth-lab")
	if o.Size > hdr+len(payload) {
		payload = bytes.Repeat([]byte{'b'}, o.Size-hdr)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		if !o.DF {
			return nil
		}
		var serr error
		err := c.Control(func(fd uintptr) {
			if dst.Is6() {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MTU_DISCOVER, unix.IPV6_PMTUDISC_DO)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
			}
		})
		return errors.Join(err, serr)
	}}
	var conn net.PacketConn
	err := n.Do(func() error {
		var err error
		conn, err = lc.ListenPacket(ctx, network, listen)
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
			if err != nil {
				continue
			}
			if o.Once && (m.Type == ipv4.ICMPTypeDestinationUnreachable || m.Type == ipv6.ICMPTypeDestinationUnreachable) && quotesEcho(m, id) {
				readErr <- fmt.Errorf("%w (ICMP type %v code %d from %v)", ErrUnreachable, m.Type, m.Code, peer)
				return
			}
			if m.Type != replyType {
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
		msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq, Data: payload}}
		b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
		if err != nil {
			return err
		}
		if _, err := conn.WriteTo(b, target); errors.Is(err, unix.EMSGSIZE) {
			return fmt.Errorf("ping %s from %s with %d bytes, DF: %w", dst, n.Name, o.Size, err)
		} else if err != nil {
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
			if o.Once {
				if lastSendErr != nil {
					return fmt.Errorf("ping %s from %s: the one echo request was not sent: %w", dst, n.Name, lastSendErr)
				}
				// Wait for the reply until ctx ends; send nothing more.
				select {
				case <-got:
					return nil
				case err := <-readErr:
					return fmt.Errorf("ping %s from %s: %w", dst, n.Name, err)
				case <-ctx.Done():
					return fmt.Errorf("ping %s from %s: no reply to the one echo request", dst, n.Name)
				}
			}
		}
	}
}

// quotesEcho reports whether the ICMP error m quotes an echo request with
// id (the original datagram's first bytes: its IP header, then ICMP type,
// code, checksum, id).
func quotesEcho(m *icmp.Message, id int) bool {
	du, ok := m.Body.(*icmp.DstUnreach)
	if !ok || len(du.Data) < 1 {
		return false
	}
	d := du.Data
	off := 40 // IPv6 header
	if d[0]>>4 == 4 {
		off = int(d[0]&0x0f) * 4
	}
	if len(d) < off+6 {
		return false
	}
	return int(d[off+4])<<8|int(d[off+5]) == id
}

// PingOnce sends one echo request from n to dst and waits up to timeout
// for its reply, as `ping -c1 -W` does: the reachability check of a user,
// with no retry.
func (n *NS) PingOnce(ctx context.Context, dst netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return n.PingWith(ctx, dst, PingOptions{Once: true})
}

// PingWithin is Ping with a timeout.
func (n *NS) PingWithin(ctx context.Context, dst netip.Addr, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return n.Ping(ctx, dst)
}

// PingStream sends an echo request from n to dst every interval until ctx
// ends, as `ping -i` does, and counts the requests sent and those
// answered; a reply that comes after the last request was sent, within
// one second, still counts. It is the check that traffic keeps flowing
// across a change (an agent's restart, say): lost = sent - answered.
//
// Equivalent: ip netns exec $ns ping -i $interval -w $duration $dst
func (n *NS) PingStream(ctx context.Context, dst netip.Addr, interval time.Duration) (sent, answered int, err error) {
	dst = dst.Unmap()
	network, listen, proto := "ip4:icmp", "0.0.0.0", 1
	var reqType, replyType icmp.Type = ipv4.ICMPTypeEcho, ipv4.ICMPTypeEchoReply
	if dst.Is6() {
		network, listen, proto = "ip6:ipv6-icmp", "::", 58
		reqType, replyType = ipv6.ICMPTypeEchoRequest, ipv6.ICMPTypeEchoReply
	}
	var conn net.PacketConn
	if err := n.Do(func() error {
		var err error
		conn, err = net.ListenPacket(network, listen)
		return err
	}); err != nil {
		return 0, 0, fmt.Errorf("ping %s from %s: open raw socket: %w", dst, n.Name, err)
	}
	id := int(randUint16())
	target := &net.IPAddr{IP: dst.AsSlice()}
	var mu sync.Mutex
	seen := map[int]bool{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			nr, peer, err := conn.ReadFrom(buf)
			if err != nil {
				return // closed
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
			mu.Lock()
			seen[e.Seq] = true
			mu.Unlock()
		}
	}()
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for seq := 1; ctx.Err() == nil; seq++ {
		msg := icmp.Message{Type: reqType, Body: &icmp.Echo{ID: id, Seq: seq & 0xffff, Data: []byte("berth-lab")}}
		b, merr := msg.Marshal(nil)
		if merr != nil {
			conn.Close()
			return sent, 0, merr
		}
		if _, werr := conn.WriteTo(b, target); werr == nil {
			sent++
		}
		select {
		case <-ctx.Done():
		case <-tick.C:
		}
	}
	time.Sleep(time.Second) // the last replies
	conn.Close()
	<-done
	mu.Lock()
	defer mu.Unlock()
	return sent, len(seen), nil
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
