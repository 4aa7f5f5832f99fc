package lab

// A DHCP network for tests of upstream's dhcp IPAM plugin: a small DHCPv4
// server on a link of a lab namespace (a bridge the caller made there), and
// the plugin's daemon, a process started in a lab namespace, listening on a
// unix socket in a directory of the caller's.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/vishvananda/netlink"
)

// PinMAC sets the hardware address of link name to the one it has. A
// bridge whose address was never set takes the lowest of its ports' and
// changes it as ports come and go, leaving its neighbours with a stale
// entry: berth pins the bridges it creates, and a test that creates the
// bridge itself (to serve DHCP on it before the first ADD) pins it too.
//
// Equivalent: ip -n $ns link set $name address $(ip -n $ns -br link show $name | awk '{print $3}')
func (n *NS) PinMAC(name string) error {
	return n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		if err := h.LinkSetHardwareAddr(l, l.Attrs().HardwareAddr); err != nil {
			return fmt.Errorf("pin mac of %s in %s: %w", name, n.Name, err)
		}
		return nil
	})
}

// DHCPServerOptions says what a DHCPServer hands out.
type DHCPServerOptions struct {
	// Iface is the link the server serves, in the server's namespace.
	Iface string
	// Server is the server's address on Iface with the subnet's length:
	// the server identifier, the subnet mask handed out and the router.
	Server netip.Prefix
	// Pool is the range leased addresses come from (inside Server's
	// subnet; the server's own address is skipped).
	Pool netip.Prefix
	// LeaseTime is the lease time handed out (option 51).
	LeaseTime time.Duration
	// RenewalTime, when set, is the renewal time T1 handed out (option
	// 58); clients otherwise renew at half the lease time.
	RenewalTime time.Duration
}

// DHCPMessage is a message the server received.
type DHCPMessage struct {
	Type     dhcpv4.MessageType
	ClientID string     // option 61 without its type byte, else the client's MAC
	CIAddr   netip.Addr // the client's address field: set when renewing and releasing
	XID      dhcpv4.TransactionID
}

func (m DHCPMessage) String() string {
	return fmt.Sprintf("%s from %q (ciaddr %s, xid %s)", m.Type, m.ClientID, m.CIAddr, m.XID)
}

// DHCPServer is a DHCPv4 server on one link: DISCOVER gets an OFFER of
// the client's address or a free one from the pool, REQUEST an ACK (or a
// NAK for an address that is not the client's), RELEASE frees the
// client's address. Clients are told apart by their client identifier.
//
// It reads and writes whole frames through a packet socket on the link,
// as ISC dhcpd does on Linux, rather than through a UDP socket: the dhcp
// plugin sends its RELEASE from source 0.0.0.0 to the server's unicast
// address, which the kernel drops as a martian before any UDP socket sees
// it. Replies go out as broadcast frames from the server's address.
type DHCPServer struct {
	opts      DHCPServerOptions
	srv       *server4.Server
	done      chan error
	closeOnce sync.Once
	closeErr  error

	mu      sync.Mutex
	bound   map[string]netip.Addr // client ID → address, ACKed
	offered map[string]netip.Addr // client ID → address, offered, not yet requested
	msgs    []DHCPMessage
	changed chan struct{} // closed and replaced on each message
}

// StartDHCPServer starts a DHCP server on o.Iface in ns. Close stops it.
func StartDHCPServer(ns *NS, o DHCPServerOptions) (*DHCPServer, error) {
	if !o.Server.Addr().Is4() || !o.Pool.Addr().Is4() || !o.Server.Contains(o.Pool.Masked().Addr()) {
		return nil, fmt.Errorf("dhcp server: want an IPv4 server address and a pool inside its subnet, have %s and %s", o.Server, o.Pool)
	}
	s := &DHCPServer{
		opts:    o,
		done:    make(chan error, 1),
		bound:   map[string]netip.Addr{},
		offered: map[string]netip.Addr{},
		changed: make(chan struct{}),
	}
	var conn net.PacketConn
	err := ns.Do(func() error {
		var err error
		conn, err = nclient4.NewRawUDPConn(o.Iface, dhcpv4.ServerPort)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dhcp server: packet socket on %s in %s: %w", o.Iface, ns.Name, err)
	}
	raw, ok := conn.(*nclient4.BroadcastRawUDPConn)
	if !ok {
		conn.Close()
		return nil, fmt.Errorf("dhcp server: unexpected packet conn %T", conn)
	}
	// Reads take every frame to UDP port 67; writes carry the server's
	// address as their source.
	src := &net.UDPAddr{IP: net.IP(o.Server.Addr().AsSlice()), Port: dhcpv4.ServerPort}
	rw := readWriteConn{PacketConn: raw, w: nclient4.NewBroadcastUDPConn(raw.PacketConn, src)}
	if s.srv, err = server4.NewServer("", nil, s.handle, server4.WithConn(rw)); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dhcp server: %w", err)
	}
	go func() { s.done <- s.srv.Serve() }()
	return s, nil
}

// readWriteConn reads through its PacketConn and writes through w.
type readWriteConn struct {
	net.PacketConn
	w net.PacketConn
}

func (c readWriteConn) WriteTo(b []byte, addr net.Addr) (int, error) { return c.w.WriteTo(b, addr) }

// Close stops the server. Closing twice is not an error.
func (s *DHCPServer) Close() error {
	s.closeOnce.Do(func() {
		if err := s.srv.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = err
		}
		<-s.done
	})
	return s.closeErr
}

// Leases returns the bound leases: client ID → address.
func (s *DHCPServer) Leases() map[string]netip.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]netip.Addr, len(s.bound))
	for k, v := range s.bound {
		out[k] = v
	}
	return out
}

// Messages returns the messages received so far, oldest first.
func (s *DHCPServer) Messages() []DHCPMessage {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.msgs)
}

// WaitMessage returns the first message received (the ones already
// received included) that match accepts, waiting until ctx ends.
func (s *DHCPServer) WaitMessage(ctx context.Context, match func(DHCPMessage) bool) (DHCPMessage, error) {
	seen := 0
	for {
		s.mu.Lock()
		msgs, changed := s.msgs[seen:], s.changed
		seen = len(s.msgs)
		s.mu.Unlock()
		for _, m := range msgs {
			if match(m) {
				return m, nil
			}
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return DHCPMessage{}, fmt.Errorf("dhcp server: no such message among %d received: %w", seen, ctx.Err())
		}
	}
}

func (s *DHCPServer) handle(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return
	}
	m := DHCPMessage{Type: req.MessageType(), ClientID: clientID(req), XID: req.TransactionID}
	m.CIAddr, _ = netip.AddrFromSlice(req.ClientIPAddr.To4())
	reply := s.answer(m, req)
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	if reply != nil {
		_, _ = conn.WriteTo(reply.ToBytes(), peer)
	}
}

// answer updates the leases for m and returns the reply to send, if any.
func (s *DHCPServer) answer(m DHCPMessage, req *dhcpv4.DHCPv4) *dhcpv4.DHCPv4 {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch m.Type {
	case dhcpv4.MessageTypeDiscover:
		a, ok := s.bound[m.ClientID]
		if !ok {
			a, ok = s.offered[m.ClientID]
		}
		if !ok {
			if a, ok = s.free(); !ok {
				return nil // pool exhausted: stay silent, as servers do
			}
		}
		s.offered[m.ClientID] = a
		return s.reply(req, dhcpv4.MessageTypeOffer, a)
	case dhcpv4.MessageTypeRequest:
		if id := req.ServerIdentifier(); id != nil && !id.Equal(net.IP(s.opts.Server.Addr().AsSlice())) {
			delete(s.offered, m.ClientID) // the client chose another server
			return nil
		}
		want := m.CIAddr // renewing or rebinding
		if r, ok := netip.AddrFromSlice(req.RequestedIPAddress().To4()); ok && r.IsValid() {
			want = r // selecting or init-reboot
		}
		have, ok := s.bound[m.ClientID]
		if !ok {
			have, ok = s.offered[m.ClientID]
		}
		if !ok || have != want {
			return s.reply(req, dhcpv4.MessageTypeNak, netip.Addr{})
		}
		delete(s.offered, m.ClientID)
		s.bound[m.ClientID] = have
		return s.reply(req, dhcpv4.MessageTypeAck, have)
	case dhcpv4.MessageTypeRelease:
		if a, ok := s.bound[m.ClientID]; ok && a == m.CIAddr {
			delete(s.bound, m.ClientID)
		}
	}
	return nil
}

// free returns the first pool address neither bound, offered nor the server's.
func (s *DHCPServer) free() (netip.Addr, bool) {
	taken := map[netip.Addr]bool{s.opts.Server.Addr(): true}
	for _, a := range s.bound {
		taken[a] = true
	}
	for _, a := range s.offered {
		taken[a] = true
	}
	subnet := s.opts.Server.Masked()
	for a := s.opts.Pool.Masked().Addr(); s.opts.Pool.Contains(a); a = a.Next() {
		if a == subnet.Addr() || !subnet.Contains(a.Next()) { // network or broadcast address
			continue
		}
		if !taken[a] {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func (s *DHCPServer) reply(req *dhcpv4.DHCPv4, t dhcpv4.MessageType, a netip.Addr) *dhcpv4.DHCPv4 {
	server := net.IP(s.opts.Server.Addr().AsSlice())
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(t),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(server)),
	}
	if t != dhcpv4.MessageTypeNak {
		mods = append(mods,
			dhcpv4.WithYourIP(net.IP(a.AsSlice())),
			dhcpv4.WithNetmask(net.CIDRMask(s.opts.Server.Bits(), 32)),
			dhcpv4.WithRouter(server),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(s.opts.LeaseTime)),
		)
		if s.opts.RenewalTime > 0 {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(s.opts.RenewalTime)))
		}
	}
	r, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil // only a failing random transaction ID source errs
	}
	return r
}

// clientID is option 61 without its leading type byte (0, "not a hardware
// address", is what the dhcp plugin sends), or the hardware address when
// the client sent no option 61.
func clientID(m *dhcpv4.DHCPv4) string {
	id := m.Options.Get(dhcpv4.OptionClientIdentifier)
	if len(id) > 1 {
		return string(id[1:])
	}
	return m.ClientHWAddr.String()
}

// DHCPDaemon is the dhcp plugin's daemon (`dhcp daemon`), which runs the
// DHCP client of each container attachment on the plugin's behalf: it
// enters the container's namespace by the path in CNI_NETNS, acquires a
// lease there, renews it until the plugin's DEL asks it to release it.
type DHCPDaemon struct {
	NS      *NS
	Socket  string // -socketpath, the ipam config's "daemonSocketPath"
	LogPath string // its stdout and stderr

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has been waited for
}

// DHCPDaemonOptions says how StartDHCPDaemon runs the daemon.
type DHCPDaemonOptions struct {
	Binary string // the dhcp plugin
	Dir    string // holds the socket (dhcp.sock) and the log (dhcp.log)
	// Args are more flags: -timeout, -resendtimeout, …
	Args []string
}

// StartDHCPDaemon starts the daemon in ns and waits until its socket
// accepts connections. Stop it when done; NS.Delete kills it if it still
// runs.
//
// Equivalent: ip netns exec $ns dhcp daemon -socketpath $dir/dhcp.sock $args >$dir/dhcp.log 2>&1 &
func StartDHCPDaemon(ctx context.Context, ns *NS, o DHCPDaemonOptions) (*DHCPDaemon, error) {
	d := &DHCPDaemon{
		NS:      ns,
		Socket:  filepath.Join(o.Dir, "dhcp.sock"),
		LogPath: filepath.Join(o.Dir, "dhcp.log"),
		done:    make(chan struct{}),
	}
	logf, err := os.OpenFile(d.LogPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start dhcp daemon: %w", err)
	}
	defer logf.Close() // the child has its own copy
	args := append([]string{"daemon", "-socketpath", d.Socket}, o.Args...)
	d.cmd = exec.Command(o.Binary, args...)
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	// Not socket-activated: LISTEN_FDS would make it take an inherited fd.
	d.cmd.Env = slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "LISTEN_")
	})
	if err := ns.Start(d.cmd); err != nil {
		return nil, fmt.Errorf("start dhcp daemon: %w", err)
	}
	go func() {
		_ = d.cmd.Wait() // the exit status of a process we signal says nothing
		ns.forget(d.cmd.Process)
		close(d.done)
	}()
	if err := d.waitReady(ctx); err != nil {
		return nil, errors.Join(err, d.Stop())
	}
	return d, nil
}

// waitReady polls the socket until it accepts a connection, the process
// exits or ctx ends.
func (d *DHCPDaemon) waitReady(ctx context.Context) error {
	var last error
	for {
		c, err := net.Dial("unix", d.Socket)
		if err == nil {
			return c.Close()
		}
		last = err
		select {
		case <-d.done:
			return fmt.Errorf("dhcp daemon in %s exited before it listened on %s; log:\n%s", d.NS.Name, d.Socket, d.Log())
		case <-ctx.Done():
			return fmt.Errorf("dhcp daemon in %s not listening on %s: %v (%w)", d.NS.Name, d.Socket, last, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// PID is the daemon's process ID.
func (d *DHCPDaemon) PID() int { return d.cmd.Process.Pid }

// Log returns what the daemon has written so far.
func (d *DHCPDaemon) Log() string {
	b, err := os.ReadFile(d.LogPath)
	if err != nil {
		return err.Error()
	}
	return string(b)
}

// Stop sends SIGTERM (the daemon then closes and removes its socket) and
// waits up to 5 s for the process to exit, then kills it. Stopping a
// stopped daemon does nothing.
//
// Equivalent: kill $pid
func (d *DHCPDaemon) Stop() error {
	select {
	case <-d.done:
		return nil
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop dhcp daemon (pid %d): %w", d.PID(), err)
	}
	select {
	case <-d.done:
		return nil
	case <-time.After(5 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
		return fmt.Errorf("dhcp daemon (pid %d) ignored SIGTERM for 5 s: killed", d.PID())
	}
}
