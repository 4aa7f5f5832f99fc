package nat

import (
	"errors"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/nat/natplan"
)

// natTopology is three namespaces: a client (the container) and an outside
// host, each joined by a veth pair to a "host" namespace that forwards
// between them and where the backend runs. outside routes back to the
// client subnet, so traffic flows with and without masquerade, and the
// source outside sees tells which happened.
type natTopology struct {
	host, client, outside *testNS
}

// Addresses, all inside the test's own namespaces.
var (
	clientV4  = netip.MustParsePrefix("10.99.1.2/24")
	hostOutV4 = netip.MustParseAddr("10.99.2.1")
	outsideV4 = netip.MustParseAddr("10.99.2.2")
	clientV6  = netip.MustParsePrefix("fd99:1::2/64")
	hostOutV6 = netip.MustParseAddr("fd99:2::1")
	outsideV6 = netip.MustParseAddr("fd99:2::2")
)

// newTopology builds the namespaces.
//
// Equivalent: ip -n $host link add vc type veth peer name eth0 netns $client;
// ip -n $host link add vo type veth peer name eth0 netns $outside; addresses,
// routes; sysctl net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1 in $host
func newTopology(t *testing.T) natTopology {
	t.Helper()
	tp := natTopology{host: newNS(t, "h"), client: newNS(t, "c"), outside: newNS(t, "o")}
	h, c, o := tp.host, tp.client, tp.outside
	h.ip(t, "link", "add", "vc", "type", "veth", "peer", "name", "eth0", "netns", c.Name)
	h.ip(t, "link", "add", "vo", "type", "veth", "peer", "name", "eth0", "netns", o.Name)
	for _, a := range []struct {
		ns        *testNS
		dev, addr string
	}{
		{h, "vc", "10.99.1.1/24"}, {h, "vc", "fd99:1::1/64"},
		{h, "vo", "10.99.2.1/24"}, {h, "vo", "fd99:2::1/64"},
		{c, "eth0", clientV4.String()}, {c, "eth0", clientV6.String()},
		{o, "eth0", "10.99.2.2/24"}, {o, "eth0", "fd99:2::2/64"},
	} {
		if netip.MustParsePrefix(a.addr).Addr().Is6() {
			a.ns.ip(t, "addr", "add", a.addr, "dev", a.dev, "nodad")
		} else {
			a.ns.ip(t, "addr", "add", a.addr, "dev", a.dev)
		}
		a.ns.ip(t, "link", "set", a.dev, "up")
	}
	c.ip(t, "route", "add", "default", "via", "10.99.1.1")
	c.ip(t, "-6", "route", "add", "default", "via", "fd99:1::1")
	o.ip(t, "route", "add", "10.99.1.0/24", "via", "10.99.2.1")
	o.ip(t, "-6", "route", "add", "fd99:1::/64", "via", "fd99:2::1")
	h.sysctl(t, "net.ipv4.ip_forward", "1")
	h.sysctl(t, "net.ipv6.conf.all.forwarding", "1")
	return tp
}

// sourceSeen connects from client to outside's addr and returns the source
// address outside's listener saw.
func (tp natTopology) sourceSeen(t *testing.T, to netip.Addr) netip.Addr {
	t.Helper()
	var ln net.Listener
	tp.outside.must(t, "listen", func() error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(to, 0).String())
		return err
	})
	defer ln.Close()
	seen := make(chan netip.Addr, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(seen)
			return
		}
		seen <- conn.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		conn.Close()
	}()
	tp.client.must(t, "connect to "+ln.Addr().String(), func() error {
		conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		return conn.Close()
	})
	select {
	case a, ok := <-seen:
		if !ok {
			t.Fatal("listener failed")
		}
		return a
	case <-time.After(5 * time.Second):
		t.Fatal("no connection reached outside")
	}
	return netip.Addr{}
}

// TestTraffic checks the datapath: masquerade from the client's address,
// none to a container subnet, none after Delete.
func TestTraffic(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			bc.require(t)
			t.Parallel()
			tp := newTopology(t)
			b := bc.mk(tp.host.ns)
			client := masq("trafficnet", "client", "eth0", clientV4.String(), clientV6.String())
			// Another container whose subnet is outside's: traffic there
			// stays inside "container subnets" and keeps its source.
			neighbour := masq("trafficnet", "neighbour", "eth0", "10.99.2.50/24", "fd99:2::50/64")
			expect := func(step string, to, want netip.Addr) {
				t.Helper()
				if got := tp.sourceSeen(t, to); got != want {
					t.Errorf("%s: outside %s saw source %s, want %s", step, to, got, want)
				}
			}

			expect("before ensure", outsideV4, clientV4.Addr())
			tp.host.must(t, "ensure client", func() error { return b.Ensure(client) })
			expect("after ensure", outsideV4, hostOutV4)
			expect("after ensure", outsideV6, hostOutV6)

			tp.host.must(t, "ensure neighbour", func() error { return b.Ensure(neighbour) })
			expect("to a container subnet", outsideV4, clientV4.Addr())
			expect("to a container subnet", outsideV6, clientV6.Addr())
			tp.host.must(t, "delete neighbour", func() error { return b.Delete(neighbour.Owner) })
			expect("after delete neighbour", outsideV4, hostOutV4)

			tp.host.must(t, "delete client", func() error { return b.Delete(client.Owner) })
			expect("after delete", outsideV4, clientV4.Addr())
			expect("after delete", outsideV6, clientV6.Addr())
			if left := bc.dump(t, tp.host); left != "" {
				t.Errorf("state left:\n%s", left)
			}
		})
	}
}

// TestDetect: a namespace without a legacy nat table gets nftables; once
// legacy iptables has used nat there, iptables.
func TestDetect(t *testing.T) {
	needRoot(t)
	needCommand(t, "iptables-restore")
	needCommand(t, "iptables-legacy")
	t.Parallel()
	ns := newNS(t, "detect")
	got := Detect(ns.ns)
	if got != config.BackendNFTables {
		t.Errorf("Detect in a fresh namespace = %q, want %q", got, config.BackendNFTables)
	}
	ns.output(t, "iptables-legacy", "-t", "nat", "-S")
	got = Detect(ns.ns)
	if got != config.BackendIPTables {
		t.Errorf("Detect after legacy nat use = %q, want %q", got, config.BackendIPTables)
	}
}

func TestNew(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"", "nftables", "iptables"} {
		if _, err := New(nil, name); err != nil {
			t.Errorf("New(%q): %v", name, err)
		}
	}
	if _, err := New(nil, "ipfw"); err == nil {
		t.Error(`New("ipfw") = nil error`)
	}
	b := iptBackend{cmds: iptables.Commands{Restore4: "no-such-restore", Save4: "no-such-save", Restore6: "x", Save6: "y"}}
	_, err := b.read("n", natplan.V4)
	if err == nil || !strings.Contains(err.Error(), "no-such-save not found") || !errors.Is(err, exec.ErrNotFound) {
		t.Errorf("List with a missing binary = %v", err)
	}
}
