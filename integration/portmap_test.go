package integration

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
)

var portmapPlugins = []string{"bridge", "host-local", "portmap"}

func (e *env) portmapConf() *lab.Conflist {
	return e.conf("bridge-portmap.conflist", lab.ConflistOptions{})
}

// publish sets c's portMappings capability argument (kubelet's spelling).
func (c *container) publish(ms ...map[string]any) *container {
	list := make([]any, len(ms))
	for i, m := range ms {
		list[i] = m
	}
	c.att.CapabilityArgs = map[string]any{"portMappings": list}
	return c
}

func pm(proto string, hostPort, containerPort int, hostIP string) map[string]any {
	m := map[string]any{"hostPort": hostPort, "containerPort": containerPort, "protocol": proto}
	if hostIP != "" {
		m["hostIP"] = hostIP
	}
	return m
}

// cniCode returns err's CNI code, or 0 when it is not a CNI error.
func cniCode(err error) uint {
	var te *types.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

// dialWant dials dst from ns and checks that the container's listener
// answered and saw the connection come from wantFrom (unless invalid).
func dialWant(ctx context.Context, t *testing.T, what string, from *lab.NS, dst netip.AddrPort, wantFrom netip.Addr) {
	t.Helper()
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	line, err := from.DialTCP(dctx, dst)
	if err != nil {
		t.Errorf("%s: dial %s from %s: %v", what, dst, from, err)
		return
	}
	if !strings.HasPrefix(line, "hello ") {
		t.Errorf("%s: dial %s: got %q, want the container's hello", what, dst, line)
		return
	}
	seen, err := netip.ParseAddrPort(strings.TrimSpace(strings.TrimPrefix(line, "hello ")))
	if err != nil {
		t.Errorf("%s: dial %s: %v", what, dst, err)
		return
	}
	if wantFrom.IsValid() && seen.Addr().Unmap() != wantFrom {
		t.Errorf("%s: dial %s: the container saw the client as %s, want %s", what, dst, seen.Addr(), wantFrom)
	}
}

// A published port is reached from another host (with the client's own
// address), from the host by its address and by 127.0.0.1, and from
// containers on the same bridge through the host's address (hairpin,
// masqueraded to the gateway), on IPv4 and IPv6.
func TestPortmapReach(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapConf()
	c1 := e.newContainer(ctx, "c1").publish(pm("tcp", 8080, 80, ""))
	if err := e.add(ctx, conf, c1); err != nil {
		t.Fatal(err)
	}
	c2 := e.addContainers(ctx, conf, "c2")[0]
	ln, err := c1.ns.ListenTCP(netip.AddrPortFrom(netip.IPv6Unspecified(), 80))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	h4, h6 := lab.HostUplink4.Addr(), lab.HostUplink6.Addr()
	o4, o6 := lab.OutsideUplink4.Addr(), lab.OutsideUplink6.Addr()
	dialWant(ctx, t, "outside v4", e.w.Outside, netip.AddrPortFrom(h4, 8080), o4)
	dialWant(ctx, t, "outside v6", e.w.Outside, netip.AddrPortFrom(h6, 8080), o6)
	dialWant(ctx, t, "host v4", e.w.Host, netip.AddrPortFrom(h4, 8080), netip.Addr{})
	dialWant(ctx, t, "host v6", e.w.Host, netip.AddrPortFrom(h6, 8080), netip.Addr{})
	dialWant(ctx, t, "host 127.0.0.1", e.w.Host, netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), 8080), gw4)
	dialWant(ctx, t, "hairpin v4 (neighbour)", c2.ns, netip.AddrPortFrom(h4, 8080), gw4)
	dialWant(ctx, t, "hairpin v6 (neighbour)", c2.ns, netip.AddrPortFrom(h6, 8080), gw6)
	dialWant(ctx, t, "hairpin v4 (itself)", c1.ns, netip.AddrPortFrom(h4, 8080), gw4)

	if err := e.r.Check(ctx, conf.List, c1.att); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	for _, c := range []*container{c1, c2} {
		if err := e.r.Del(ctx, conf.List, c.att); err != nil {
			t.Fatal(err)
		}
		e.wantGone(ctx, "after DEL", c.att.ContainerID)
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if line, err := e.w.Outside.DialTCP(dctx, netip.AddrPortFrom(h4, 8080)); err == nil {
		t.Errorf("after DEL, host port 8080 still answers: %q", line)
	}
	e.wantNoReservations("after DEL")
}

// One owner per host port: a second claim of an overlapping key fails with
// code 101 naming the holder and changes nothing; tcp and udp, and two
// different specific addresses, do not conflict; DEL frees the port at once;
// a DEL of another container (nerdctl sends one before every ADD, with the
// same mappings) never frees the holder's port.
func TestPortmapOneOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapConf()
	h4 := lab.HostUplink4.Addr().String()

	holder := e.newContainer(ctx, "holder").publish(pm("tcp", 8080, 80, ""))
	if err := e.add(ctx, conf, holder); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name    string
		mapping map[string]any
	}{
		{"same wildcard", pm("tcp", 8080, 81, "")},
		{"0.0.0.0 under a both-family wildcard", pm("tcp", 8080, 81, "0.0.0.0")},
		{"a specific address under a wildcard", pm("tcp", 8080, 81, h4)},
		{"a specific IPv6 address under a wildcard", pm("tcp", 8080, 81, lab.HostUplink6.Addr().String())},
	} {
		c := e.newContainer(ctx, fmt.Sprintf("x%d", i)).publish(tc.mapping)
		// nerdctl's DEL before ADD: must not free the holder's port.
		if err := e.r.Del(ctx, conf.List, c.att); err != nil {
			t.Fatalf("%s: pre-ADD DEL: %v", tc.name, err)
		}
		before := e.nftDump(ctx)
		err := e.add(ctx, conf, c)
		if err == nil {
			t.Errorf("%s: second claim of tcp 8080 succeeded", tc.name)
			continue
		}
		if code := cniCode(err); code != 101 {
			t.Errorf("%s: code %d, want 101: %v", tc.name, code, err)
		}
		for _, want := range []string{"tcp", "8080", holder.att.ContainerID, e.network, "eth0", "10.88."} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: message lacks %q: %v", tc.name, want, err)
			}
		}
		if after := e.nftDump(ctx); portmapLines(after) != portmapLines(before) {
			t.Errorf("%s: the refused ADD changed the portmap table:\nbefore:\n%s\nafter:\n%s", tc.name, portmapLines(before), portmapLines(after))
		}
		if err := e.r.Del(ctx, conf.List, c.att); err != nil {
			t.Errorf("%s: DEL of the refused container: %v", tc.name, err)
		}
	}
	// Not conflicts: another protocol; two different specific addresses.
	ok := []*container{
		e.newContainer(ctx, "udp").publish(pm("udp", 8080, 80, "")),
		e.newContainer(ctx, "a1").publish(pm("tcp", 9090, 80, "192.0.2.1")),
		e.newContainer(ctx, "a2").publish(pm("tcp", 9090, 80, "192.0.2.2")),
	}
	for _, c := range ok {
		if err := e.add(ctx, conf, c); err != nil {
			t.Errorf("%s: %v", c, err)
		}
	}
	// DEL frees at once: the next claimant wins.
	if err := e.r.Del(ctx, conf.List, holder.att); err != nil {
		t.Fatal(err)
	}
	next := e.newContainer(ctx, "next").publish(pm("tcp", 8080, 80, ""))
	if err := e.add(ctx, conf, next); err != nil {
		t.Errorf("after the holder's DEL: %v", err)
	}
}

func (e *env) nftDump(ctx context.Context) string {
	e.t.Helper()
	dump, _, err := e.w.Host.NetfilterDump(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return dump
}

// portmapLines keeps the lines of a netfilter dump that are portmap
// elements or rules.
func portmapLines(dump string) string {
	var b strings.Builder
	for _, l := range strings.Split(dump, "\n") {
		if strings.Contains(l, "berth id=") || strings.Contains(l, "hostports") {
			b.WriteString(l + "\n")
		}
	}
	return b.String()
}

// Of N concurrent claims of one host port exactly one wins, every round;
// the losers get code 101.
func TestPortmapConcurrentClaims(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 4*time.Minute)
	conf := e.portmapConf()
	const n, rounds = 20, 3
	for round := range rounds {
		cs := make([]*container, n)
		for i := range cs {
			cs[i] = e.newContainer(ctx, fmt.Sprintf("r%dc%d", round, i)).publish(pm("tcp", 7070, 80, ""))
		}
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, c := range cs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = e.add(ctx, conf, c)
			}()
		}
		wg.Wait()
		winners := 0
		for i, err := range errs {
			switch {
			case err == nil:
				winners++
			case cniCode(err) != 101:
				t.Errorf("round %d: %s: code %d, want 101: %v", round, cs[i], cniCode(err), err)
			}
		}
		if winners != 1 {
			t.Fatalf("round %d: %d of %d concurrent claims of tcp 7070 won, want exactly 1", round, winners, n)
		}
		for _, c := range cs {
			if err := e.r.Del(ctx, conf.List, c.att); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// A claim overlapping a port a host process listens on is refused with
// code 102; a different specific address is not.
func TestPortmapHostListener(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapConf()
	ln, err := e.w.Host.ListenTCP(netip.MustParseAddrPort("0.0.0.0:6060"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	for _, p := range []string{"127.0.0.1:6061", "127.0.0.1:6062"} {
		lo, err := e.w.Host.ListenTCP(netip.MustParseAddrPort(p))
		if err != nil {
			t.Fatal(err)
		}
		defer lo.Close()
	}
	c := e.newContainer(ctx, "c").publish(pm("tcp", 6060, 80, ""))
	err = e.add(ctx, conf, c)
	if code := cniCode(err); code != 102 || !strings.Contains(fmt.Sprint(err), "bound on the host") || !strings.Contains(fmt.Sprint(err), "6060") {
		t.Errorf("claim of a listened-on port: code %d, err %v; want 102 naming the port and the host socket", code, err)
	}
	d := e.newContainer(ctx, "d").publish(pm("tcp", 6061, 80, lab.HostUplink4.Addr().String()))
	if err := e.add(ctx, conf, d); err != nil {
		t.Errorf("claim of %s:6061 beside a listener on 127.0.0.1:6061: %v", lab.HostUplink4.Addr(), err)
	}
	f := e.newContainer(ctx, "f").publish(pm("tcp", 6062, 80, ""))
	if err := e.add(ctx, conf, f); cniCode(err) != 102 {
		t.Errorf("wildcard claim over a listener on 127.0.0.1:6062: %v, want code 102", err)
	}
}

// A plugin killed (SIGKILL) at any point of ADD leaves state that DEL, or
// GC, removes entirely: no rule, no reservation, and the port is free.
func TestPortmapKilledMidAdd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 3*time.Minute)
	conf := e.portmapConf()
	for i, point := range []string{"before-claim", "after-claim", "after-datapath"} {
		for _, cleanup := range []string{"DEL", "GC"} {
			c := e.newContainer(ctx, fmt.Sprintf("k%d%s", i, strings.ToLower(cleanup))).publish(pm("tcp", 5050, 80, ""))
			c.att.Args = [][2]string{{"IgnoreUnknown", "1"}, {"BERTH_TEST_KILL", point}}
			if err := e.add(ctx, conf, c); err == nil {
				t.Fatalf("%s: ADD of a plugin killed %s succeeded", c, point)
			}
			c.att.Args = nil
			switch cleanup {
			case "DEL":
				if err := e.r.Del(ctx, conf.List, c.att); err != nil {
					t.Fatalf("%s: DEL after a kill %s: %v", c, point, err)
				}
			case "GC":
				if err := e.r.GC(ctx, conf.List, nil); err != nil {
					t.Fatalf("%s: GC after a kill %s: %v", c, point, err)
				}
			}
			e.wantGone(ctx, cleanup+" after a kill "+point, c.att.ContainerID)
			e.wantNoReservations(cleanup + " after a kill " + point)
			// The port is free for the next container.
			n := e.newContainer(ctx, fmt.Sprintf("n%d%s", i, strings.ToLower(cleanup))).publish(pm("tcp", 5050, 80, ""))
			if err := e.add(ctx, conf, n); err != nil {
				t.Errorf("claim after %s of a container killed %s: %v", cleanup, point, err)
			}
			if err := e.r.Del(ctx, conf.List, n.att); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// CHECK passes on a healthy attachment and names the missing reservation
// when it is removed by hand; DEL twice succeeds; GC frees exactly the
// ports of attachments not in the valid list.
func TestPortmapCheckDelGC(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapConf()
	keep := e.newContainer(ctx, "keep").publish(pm("tcp", 4040, 80, ""), pm("udp", 4040, 53, ""))
	drop := e.newContainer(ctx, "drop").publish(pm("tcp", 4041, 80, ""))
	for _, c := range []*container{keep, drop} {
		if err := e.add(ctx, conf, c); err != nil {
			t.Fatal(err)
		}
		if err := e.r.Check(ctx, conf.List, c.att); err != nil {
			t.Errorf("CHECK %s: %v", c, err)
		}
	}
	claim := filepath.Join(e.portsDir, "ports", "udp-4040", "any")
	if err := os.Remove(claim); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Check(ctx, conf.List, keep.att); err == nil || !strings.Contains(err.Error(), "udp *:4040") {
		t.Errorf("CHECK with the udp reservation removed: %v, want an error naming udp *:4040", err)
	}
	if err := e.r.GC(ctx, conf.List, []lab.Attachment{keep.att}); err != nil {
		t.Fatal(err)
	}
	if dump := e.nftDump(ctx); strings.Contains(dump, "berth id="+drop.att.ContainerID) || !strings.Contains(dump, "berth id="+keep.att.ContainerID) {
		t.Errorf("after GC keeping only %s:\n%s", keep, portmapLines(dump))
	}
	again := e.newContainer(ctx, "again").publish(pm("tcp", 4041, 80, ""))
	if err := e.add(ctx, conf, again); err != nil {
		t.Errorf("claim of a port GC freed: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := e.r.Del(ctx, conf.List, keep.att); err != nil {
			t.Errorf("DEL #%d: %v", i+1, err)
		}
	}
}

// nerdctl's spelling of portMappings (capitalised keys) works as kubelet's.
func TestPortmapCapitalisedKeys(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapConf()
	c := e.newContainer(ctx, "c").publish(map[string]any{"HostPort": 8081, "ContainerPort": 80, "Protocol": "tcp", "HostIP": "0.0.0.0"})
	if err := e.add(ctx, conf, c); err != nil {
		t.Fatal(err)
	}
	ln, err := c.ns.ListenTCP(netip.MustParseAddrPort("0.0.0.0:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dialWant(ctx, t, "outside", e.w.Outside, netip.AddrPortFrom(lab.HostUplink4.Addr(), 8081), lab.OutsideUplink4.Addr())
}

// null followed by portmap is a config error: there is nothing to map to.
func TestPortmapAfterNull(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "null", "portmap")
	ctx := testCtx(t, time.Minute)
	conf, err := lab.EditConflist([]byte(`{"cniVersion":"1.1.0","name":"`+e.network+`","plugins":[{"type":"null"},{"type":"portmap","capabilities":{"portMappings":true}}]}`),
		lab.ConflistOptions{PortmapDir: e.portsDir})
	if err != nil {
		t.Fatal(err)
	}
	c := e.newContainer(ctx, "c").publish(pm("tcp", 8082, 80, ""))
	err = e.add(ctx, conf, c)
	if cniCode(err) != 7 || !strings.Contains(fmt.Sprint(err), "null") {
		t.Errorf("null + portmap ADD: %v, want code 7 naming null", err)
	}
}

// nerdctl's flow for a refused port: DEL (no prevResult) before the ADD,
// the ADD fails in portmap after bridge gave the container a veth and a
// lease, no DEL follows, and the container's namespace is removed. The
// next ADD on the network (its periodic sweep) frees the lease, the
// masquerade entry and the record: nothing is held for good.
func TestPortmapRefusedUnderNerdctl(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapConf()
	holder := e.newContainer(ctx, "holder").publish(pm("tcp", 8080, 80, ""))
	if err := e.add(ctx, conf, holder); err != nil {
		t.Fatal(err)
	}
	x := e.newContainer(ctx, "refused").publish(map[string]any{"HostPort": 8080, "ContainerPort": 80, "Protocol": "tcp", "HostIP": "0.0.0.0"})
	if err := e.r.Del(ctx, conf.List, x.att); err != nil {
		t.Fatalf("pre-ADD DEL: %v", err)
	}
	if err := e.add(ctx, conf, x); cniCode(err) != 101 {
		t.Fatalf("ADD of the second claimant: %v, want code 101", err)
	}
	if s := e.hostState(ctx, x.att.ContainerID); len(s.leases) == 0 {
		t.Fatalf("the refused container holds no lease, so this test proves nothing:%s", s)
	}
	if err := x.ns.Delete(); err != nil {
		t.Fatal(err)
	}
	// The kernel tears a deleted namespace down asynchronously: wait for
	// the veth pair to go with it.
	for deadline := time.Now().Add(10 * time.Second); len(e.hostState(ctx, x.att.ContainerID).veths) > 0; {
		if time.Now().After(deadline) {
			t.Fatal("the refused container's host veth outlived its namespace by 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Age the network's sweep stamp as if a minute had passed.
	old := time.Now().Add(-2 * time.Minute)
	if err := os.Chtimes(filepath.Join("/run/berth/lock", "sweep-"+e.network), old, old); err != nil {
		t.Fatal(err)
	}
	next := e.newContainer(ctx, "next")
	if err := e.add(ctx, conf, next); err != nil {
		t.Fatal(err)
	}
	e.wantGone(ctx, "refused container after the next ADD's sweep", x.att.ContainerID)
	if s := e.hostState(ctx, holder.att.ContainerID); len(s.leases) == 0 || len(s.veths) != 1 {
		t.Errorf("the sweep touched the live holder:%s", s)
	}
}

// A UDP flow that started before its port was mapped (its conntrack entry
// says "to the host, no NAT") reaches the container once the port is
// published: ADD clears the stale conntrack entries of the mapped port.
func TestPortmapUDPStaleConntrack(t *testing.T) {
	t.Parallel()
	e := newEnv(t, portmapPlugins...)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.portmapConf()
	// A first container makes the host do NAT, so conntrack tracks flows.
	e.addContainers(ctx, conf, "first")
	dst := &net.UDPAddr{IP: lab.HostUplink4.Addr().AsSlice(), Port: 5353}
	var client *net.UDPConn
	// A fixed source port, so every datagram is one conntrack flow; not
	// connected, so the host's "port unreachable" does not fail writes.
	err := e.w.Outside.Do(func() error {
		var err error
		client, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 40053})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	if _, err := client.WriteTo([]byte("before"), dst); err != nil {
		t.Fatal(err)
	}
	// The precondition: the host tracks this flow, un-NATed.
	if err := e.w.Host.Do(func() error {
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
			if err != nil {
				return err
			}
			for _, f := range flows {
				if f.Forward.Protocol == unix.IPPROTO_UDP && f.Forward.DstPort == 5353 {
					return nil
				}
			}
			if time.Now().After(deadline) {
				return errors.New("no conntrack entry for the pre-mapping UDP flow: the test would prove nothing")
			}
		}
	}); err != nil {
		t.Fatal(err)
	}
	c := e.newContainer(ctx, "c").publish(pm("udp", 5353, 53, ""))
	if err := e.add(ctx, conf, c); err != nil {
		t.Fatal(err)
	}
	var srv net.PacketConn
	if err := c.ns.Do(func() error {
		var err error
		srv, err = net.ListenPacket("udp4", "0.0.0.0:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 64)
		_ = srv.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := srv.ReadFrom(buf)
		if err != nil {
			got <- "error: " + err.Error()
			return
		}
		got <- string(buf[:n])
	}()
	// Send a few times: the first may race the listener.
	for i := 0; i < 5; i++ {
		if _, err := client.WriteTo([]byte("after"), dst); err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-got:
			if s != "after" {
				t.Fatalf("the container got %q, want \"after\" (the flow of the same source port kept its pre-mapping conntrack entry)", s)
			}
			return
		case <-time.After(time.Second):
		}
	}
	t.Fatal("the container never received the datagram sent to its mapped UDP port on a flow that began before the mapping")
}

// wantNoReservations fails the test if any host port is still reserved.
func (e *env) wantNoReservations(what string) {
	e.t.Helper()
	if cs, err := os.ReadDir(filepath.Join(e.portsDir, "ports")); err == nil && len(cs) > 0 {
		e.t.Errorf("%s: reservations left: %v", what, cs)
	}
}
