package main

// Root tests of the macvlan plugin's behaviour, through the built binaries
// and libcni (the lab is in lab_root_test.go).

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/owner"
)

// Two containers in bridge mode: the LAN host reaches both over IPv4 and
// IPv6 and holds their own MACs in its neighbour table; they reach each
// other and the LAN; the result has the upstream shape; each container's
// eth0 is a bridge-mode macvlan on the master.
func TestLANReachesContainers(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conf(nil)
	n1, a1 := b.container("c1")
	n2, a2 := b.container("c2")
	r1, r2 := b.add(c, a1), b.add(c, a2)
	for _, tc := range []struct {
		n   *lab.NS
		a   lab.Attachment
		res *types100.Result
	}{{n1, a1, r1}, {n2, a2, r2}} {
		checkResult(t, tc.n, tc.a, tc.res)
		mac := resultMAC(t, tc.res)
		for _, fam := range []int{4, 6} {
			ip := resultAddr(t, tc.res, fam)
			mustPing(t, b.ctx, b.lan, ip)
			if got, err := b.lan.NeighbourMAC(ip); err != nil || got != mac {
				t.Errorf("LAN neighbour entry for %s: %q (%v), want the container's MAC %s", ip, got, err, mac)
			}
		}
		mv := macvlanIn(t, tc.n, "eth0")
		master := nlLink(t, b.host, masterName)
		if mv.Mode != netlink.MACVLAN_MODE_BRIDGE || mv.ParentIndex != master.Attrs().Index {
			t.Errorf("%s eth0: mode %v parent %d, want bridge mode on %s (%d)", tc.n, mv.Mode, mv.ParentIndex, masterName, master.Attrs().Index)
		}
		if want := (owner.Owner{Network: c.List.Name, ContainerID: tc.a.ContainerID, IfName: "eth0"}).Alias(); mv.Alias != want {
			t.Errorf("%s eth0 alias %q, want %q", tc.n, mv.Alias, want)
		}
		mustPing(t, b.ctx, tc.n, lanGW4.Addr())
		mustPing(t, b.ctx, tc.n, lanGW6.Addr())
	}
	mustPing(t, b.ctx, n1, resultAddr(t, r2, 4))
	mustPing(t, b.ctx, n2, resultAddr(t, r1, 6))
	if err := b.run.Check(b.ctx, c.List, a1); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}

// checkResult checks a result against the container: one interface, eth0
// in the sandbox with the link's MAC; every IP on interface 0, on eth0,
// with the LAN's gateway; default routes via the gateways.
func checkResult(t *testing.T, n *lab.NS, a lab.Attachment, res *types100.Result) {
	t.Helper()
	if res.CNIVersion != "1.1.0" {
		t.Errorf("result version %s, want 1.1.0", res.CNIVersion)
	}
	if len(res.Interfaces) != 1 || res.Interfaces[0].Name != "eth0" || res.Interfaces[0].Sandbox != a.NetNS {
		t.Fatalf("result interfaces %v: want eth0 in sandbox %s", res.Interfaces, a.NetNS)
	}
	l, err := n.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if res.Interfaces[0].Mac != l.MAC {
		t.Errorf("result MAC %s, eth0 has %s", res.Interfaces[0].Mac, l.MAC)
	}
	if len(res.IPs) != 2 {
		t.Fatalf("result IPs %v: want one per family", res.IPs)
	}
	for _, ip := range res.IPs {
		p, _ := netip.AddrFromSlice(ip.Address.IP)
		p = p.Unmap()
		if ip.Interface == nil || *ip.Interface != 0 {
			t.Errorf("IP %s not tied to interfaces[0]", p)
		}
		if !slices.ContainsFunc(l.Addrs, func(a netip.Prefix) bool { return a.Addr() == p }) {
			t.Errorf("result IP %s not on eth0 (%v)", p, l.Addrs)
		}
		gw, _ := netip.AddrFromSlice(ip.Gateway)
		if want := lanGW4.Addr(); p.Is6() && gw.Unmap() != lanGW6.Addr() || p.Is4() && gw.Unmap() != want {
			t.Errorf("IP %s gateway %s, want the LAN's", p, gw)
		}
	}
	rs, err := n.Routes()
	if err != nil {
		t.Fatal(err)
	}
	for _, gw := range []netip.Addr{lanGW4.Addr(), lanGW6.Addr()} {
		if !slices.ContainsFunc(rs, func(r lab.Route) bool { return r.Dst.Bits() == 0 && r.Gw == gw && r.Dev == "eth0" }) {
			t.Errorf("no default route via %s dev eth0 in %s: %+v", gw, n, rs)
		}
	}
}

// In private mode two containers on one master cannot reach each other;
// both still reach the LAN and the LAN them.
func TestPrivateMode(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conf(map[string]any{"mode": "private"})
	n1, a1 := b.container("c1")
	n2, a2 := b.container("c2")
	r1, r2 := b.add(c, a1), b.add(c, a2)
	if mv := macvlanIn(t, n1, "eth0"); mv.Mode != netlink.MACVLAN_MODE_PRIVATE {
		t.Errorf("eth0 mode %v, want private", mv.Mode)
	}
	for _, r := range []*types100.Result{r1, r2} {
		mustPing(t, b.ctx, b.lan, resultAddr(t, r, 4))
	}
	mustNotPing(t, b.ctx, n1, resultAddr(t, r2, 4), "private mode")
	mustNotPing(t, b.ctx, n2, resultAddr(t, r1, 6), "private mode")
}

// vepa and passthru give the mode asked for; the LAN reaches the
// container in each.
func TestModes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		mode string
		want netlink.MacvlanMode
	}{{"vepa", netlink.MACVLAN_MODE_VEPA}, {"passthru", netlink.MACVLAN_MODE_PASSTHRU}} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			b := newBed(t)
			c := b.conf(map[string]any{"mode": tc.mode})
			n, a := b.container("c1")
			res := b.add(c, a)
			if mv := macvlanIn(t, n, "eth0"); mv.Mode != tc.want {
				t.Errorf("eth0 mode %v, want %s", mv.Mode, tc.mode)
			}
			mustPing(t, b.ctx, b.lan, resultAddr(t, res, 4))
			if err := b.run.Check(b.ctx, c.List, a); err != nil {
				t.Errorf("CHECK: %v", err)
			}
			b.del(c, a)
			b.assertClean(false)
		})
	}
}

// The host cannot reach a macvlan container through the master; with
// hostShim it can, over both families, through one shared shim with a host
// route and a permanent neighbour entry per container address. The shim
// goes with the last container that uses it.
func TestHostShim(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	plain := b.conf(nil)
	shim := b.conf(map[string]any{"hostShim": true})
	_, a0 := b.container("plain")
	_, a1 := b.container("s1")
	_, a2 := b.container("s2")
	r0 := b.add(plain, a0)
	mustNotPing(t, b.ctx, b.host, resultAddr(t, r0, 4), "no host shim")
	if names := b.hostLinks(); len(names) != 0 {
		t.Errorf("host links %v without hostShim, want none", names)
	}
	r1, r2 := b.add(shim, a1), b.add(shim, a2)
	shimName := link.ShimName(masterName)
	sl, err := b.host.LinkByName(shimName)
	if err != nil {
		t.Fatalf("host shim: %v", err)
	}
	if sl.Type != "macvlan" || sl.Alias != link.ShimAlias(masterName) || !sl.Up {
		t.Errorf("host shim %+v: want an up macvlan with alias %q", sl, link.ShimAlias(masterName))
	}
	if names := b.hostLinks(); !slices.Equal(names, []string{shimName}) {
		t.Errorf("host links %v, want only the shim %s", names, shimName)
	}
	for _, r := range []*types100.Result{r1, r2} {
		for _, fam := range []int{4, 6} {
			ip := resultAddr(t, r, fam)
			mustPing(t, b.ctx, b.host, ip)
			b.wantShimRoute(ip, true)
			if got, err := b.host.NeighbourMAC(ip); err != nil || got != resultMAC(t, r) {
				t.Errorf("host neighbour entry for %s: %q (%v), want %s", ip, got, err, resultMAC(t, r))
			}
		}
	}
	// The plain container is still out of the host's reach: it has no route.
	mustNotPing(t, b.ctx, b.host, resultAddr(t, r0, 4), "hostShim is another network's")
	for _, a := range []lab.Attachment{a1, a2} {
		if err := b.run.Check(b.ctx, shim.List, a); err != nil {
			t.Errorf("CHECK %s: %v", a.ContainerID, err)
		}
	}

	b.del(shim, a1)
	b.wantShimRoute(resultAddr(t, r1, 4), false)
	b.wantShimRoute(resultAddr(t, r1, 6), false)
	mustPing(t, b.ctx, b.host, resultAddr(t, r2, 6))
	b.del(shim, a2)
	if names := b.hostLinks(); len(names) != 0 {
		t.Errorf("host links %v after the last shim user went, want none", names)
	}
	b.del(plain, a0)
	b.assertClean(false)
}

// wantShimRoute checks whether the host routes ip through the shim.
func (b *bed) wantShimRoute(ip netip.Addr, want bool) {
	b.t.Helper()
	rs, err := b.host.Routes()
	if err != nil {
		b.t.Fatal(err)
	}
	got := slices.ContainsFunc(rs, func(r lab.Route) bool {
		return r.Dst == netip.PrefixFrom(ip, ip.BitLen()) && r.Dev == link.ShimName(masterName)
	})
	if got != want {
		b.t.Errorf("host route %s dev %s: present %v, want %v; routes %+v", ip, link.ShimName(masterName), got, want, rs)
	}
}

// promisc turns the master promiscuous while a container that asked is on
// it, and restores it with the last such container — unless the master
// was promiscuous before, when it stays so.
func TestPromisc(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	prom := b.conf(map[string]any{"promisc": true})
	plain := b.conf(nil)
	_, a1 := b.container("p1")
	_, a2 := b.container("p2")
	_, a3 := b.container("plain")
	if b.promisc() {
		t.Fatal("master promiscuous before any ADD")
	}
	b.add(prom, a1)
	if !b.promisc() {
		t.Error("after ADD with promisc: master not promiscuous")
	}
	b.add(prom, a2)
	b.add(plain, a3)
	b.del(prom, a1)
	if !b.promisc() {
		t.Error("after DEL of one of two promisc containers: master not promiscuous")
	}
	b.del(prom, a2)
	if b.promisc() {
		t.Error("after DEL of the last promisc container: master still promiscuous")
	}
	b.del(plain, a3)
	b.assertClean(false)

	// Promiscuous before berth: left so.
	if err := b.host.SetPromisc(masterName, true); err != nil {
		t.Fatal(err)
	}
	_, a4 := b.container("p4")
	b.add(prom, a4)
	if err := b.run.Check(b.ctx, prom.List, a4); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	b.del(prom, a4)
	b.assertClean(true)
}

// A container re-created with the same addresses and a new MAC announces
// itself: the LAN host's neighbour entries (IPv4 by gratuitous ARP, IPv6
// by unsolicited neighbour advertisement) change to the new MAC without
// the LAN host sending anything.
func TestNeighboursLearnNewMAC(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conf(nil)
	ips := []string{"192.168.1.210/24", "fd00:1::d2/64"}
	_, a1 := b.container("old")
	a1.CapabilityArgs = map[string]any{"ips": ips, "mac": "02:00:00:00:77:01"}
	r1 := b.add(c, a1)
	v4, v6 := resultAddr(t, r1, 4), resultAddr(t, r1, 6)
	if v4.String() != "192.168.1.210" || v6.String() != "fd00:1::d2" || resultMAC(t, r1) != "02:00:00:00:77:01" {
		t.Fatalf("capability args not honoured: %v", r1)
	}
	mustPing(t, b.ctx, b.lan, v4)
	mustPing(t, b.ctx, b.lan, v6)
	for _, ip := range []netip.Addr{v4, v6} {
		if got, err := b.lan.NeighbourMAC(ip); err != nil || got != "02:00:00:00:77:01" {
			t.Fatalf("LAN neighbour %s = %q (%v) before the re-creation", ip, got, err)
		}
	}
	b.del(c, a1)

	_, a2 := b.container("new")
	a2.CapabilityArgs = map[string]any{"ips": ips, "mac": "02:00:00:00:77:02"}
	b.add(c, a2)
	for _, ip := range []netip.Addr{v4, v6} {
		deadline := time.Now().Add(3 * time.Second)
		for {
			got, err := b.lan.NeighbourMAC(ip)
			if err == nil && got == "02:00:00:00:77:02" {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("LAN neighbour %s = %q (%v) 3s after the re-creation, want the new MAC 02:00:00:00:77:02", ip, got, err)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func TestMTU(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	n, a := b.container("c1")
	b.add(b.conf(map[string]any{"mtu": 1400}), a)
	if got := nlLink(t, n, "eth0").Attrs().MTU; got != 1400 {
		t.Errorf("eth0 MTU %d, want 1400", got)
	}
}

// With no master in the config, the host's default route's interface is
// the master.
func TestDefaultMaster(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conf(map[string]any{"master": nil})
	n, a := b.container("c1")
	res := b.add(c, a)
	if mv := macvlanIn(t, n, "eth0"); mv.ParentIndex != nlLink(t, b.host, masterName).Attrs().Index {
		t.Errorf("eth0 parent %d, want %s (the default route's)", mv.ParentIndex, masterName)
	}
	mustPing(t, b.ctx, b.lan, resultAddr(t, res, 4))
	if err := b.run.Check(b.ctx, c.List, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
}

// The macvlan is born under a temporary name in the container: a host
// interface named like CNI_IFNAME does not get in the way, and nothing is
// left under the temporary name.
func TestHostLinkNamedLikeIfName(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	if err := lab.Veth(lab.VethEnd{NS: b.host, Name: "eth0"}, lab.VethEnd{NS: b.host, Name: "bmvpeer0"}); err != nil {
		t.Fatal(err)
	}
	n, a := b.container("c1")
	b.add(b.conf(nil), a)
	ls, err := n.Links()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, l := range ls {
		names = append(names, l.Name)
	}
	if !slices.Equal(names, []string{"lo", "eth0"}) {
		t.Errorf("container links %v, want lo and eth0", names)
	}
}

// linkInContainer: the master is inside the container's namespace (a veth
// to the LAN here), and the macvlan is made there.
func TestLinkInContainer(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	n, a := b.container("c1")
	if err := lab.Veth(lab.VethEnd{NS: n, Name: "up1"}, lab.VethEnd{NS: b.lan, Name: "eth1", Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.2.1/24")}}); err != nil {
		t.Fatal(err)
	}
	c := b.conf(map[string]any{"master": "up1", "linkInContainer": true,
		"ipam": map[string]any{"type": "static", "addresses": []any{map[string]any{"address": "192.168.2.10/24"}}}})
	b.add(c, a)
	if mv := macvlanIn(t, n, "eth0"); mv.ParentIndex != nlLink(t, n, "up1").Attrs().Index {
		t.Errorf("eth0 parent %d, want up1 in the container", mv.ParentIndex)
	}
	mustPing(t, b.ctx, b.lan, netip.MustParseAddr("192.168.2.10"))
	if err := b.run.Check(b.ctx, c.List, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	b.del(c, a)
	if _, err := n.LinkByName("eth0"); err == nil {
		t.Error("eth0 still in the container after DEL")
	}
	b.assertClean(false)
}

// nlLink reads a link through netlink in namespace n.
func nlLink(t *testing.T, n *lab.NS, name string) netlink.Link {
	t.Helper()
	l, err := n.NetlinkLink(name)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// macvlanIn reads the macvlan name in n.
func macvlanIn(t *testing.T, n *lab.NS, name string) *netlink.Macvlan {
	t.Helper()
	l := nlLink(t, n, name)
	mv, ok := l.(*netlink.Macvlan)
	if !ok {
		t.Fatalf("%s in %s is a %s, not a macvlan", name, n, l.Type())
	}
	return mv
}
