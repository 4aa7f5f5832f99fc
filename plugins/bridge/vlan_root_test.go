package main

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"testing"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink/nl"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/link"
)

// The tests of vlan, vlanTrunk and preserveDefaultVlan need bridge VLAN
// filtering: where the kernel lacks it they skip and the VM layer (make
// test-vm) runs them; TestVlanNeedsFiltering covers the kernel without.

// With vlan and isGateway the gateway address goes on "<bridge>.<vlan>",
// whose peer is a bridge port in that VLAN (pvid, untagged), as upstream
// does; the container reaches it; the result lists it.
func TestVlanGateway(t *testing.T) {
	t.Parallel()
	lab.RequireKernel(t, lab.KernelVLANFiltering)
	b := newBed(t)
	const br, vlan = "bopt-vgw", 100
	c := b.conflist("bopt-vgw", `{"type":"bridge","bridge":"bopt-vgw","isGateway":true,"vlan":100,
		"ipam":{"type":"host-local","subnet":"10.73.0.0/24"}}`)
	n, a := b.container("c1")
	res := b.add(c, a)
	gwName := link.VlanGatewayName(br, vlan)
	if !slices.ContainsFunc(res.Interfaces, func(i *types100.Interface) bool { return i.Name == gwName }) {
		t.Errorf("result interfaces %v do not list %s", res.Interfaces, gwName)
	}
	gw, err := b.host.LinkByName(gwName)
	if err != nil {
		t.Fatal(err)
	}
	want := netip.MustParsePrefix("10.73.0.1/24")
	if !slices.Contains(gw.Addrs, want) {
		t.Errorf("%s holds %v, want %s", gwName, gw.Addrs, want)
	}
	if brLink, err := b.host.LinkByName(br); err != nil || slices.Contains(brLink.Addrs, want) {
		t.Errorf("bridge %s holds %v (%v): the gateway belongs on %s", br, brLink.Addrs, err, gwName)
	}
	port := link.VlanGatewayPortName(br, vlan)
	if got, want := portVlans(t, b.host, port), []string{"100 pvid untagged"}; !slices.Equal(got, want) {
		t.Errorf("port %s vlans %v, want %v", port, got, want)
	}
	if got, want := portVlans(t, b.host, hostVethOf(t, res)), []string{"100 pvid untagged"}; !slices.Equal(got, want) {
		t.Errorf("container's port vlans %v, want %v", got, want)
	}
	mustPing(t, b.ctx, n, want.Addr())
	b.del(c, a)
	if _, err := b.host.LinkByName(hostVethOf(t, res)); err == nil {
		t.Errorf("host veth %s left after DEL", hostVethOf(t, res))
	}
}

// Two networks on one bridge in VLANs 100 and 200: containers in the same
// VLAN reach each other, across VLANs they do not, though all are in one
// subnet on one bridge; each port is in its VLAN only (VLAN 1 dropped).
func TestVlanIsolation(t *testing.T) {
	t.Parallel()
	lab.RequireKernel(t, lab.KernelVLANFiltering)
	b := newBed(t)
	conf := func(network string, vlan, first int) *lab.Conflist {
		return b.conflist(network, fmt.Sprintf(`{"type":"bridge","bridge":"bopt-viso","vlan":%d,
			"ipam":{"type":"host-local","ranges":[[{"subnet":"10.74.0.0/24","rangeStart":"10.74.0.%d","rangeEnd":"10.74.0.%d"}]]}}`,
			vlan, first, first+9))
	}
	c100, c200 := conf("bopt-viso100", 100, 10), conf("bopt-viso200", 200, 20)
	n1, a1 := b.container("a1")
	n2, a2 := b.container("a2")
	_, a3 := b.container("b1")
	r1, r2, r3 := b.add(c100, a1), b.add(c100, a2), b.add(c200, a3)
	for _, tc := range []struct {
		res  *types100.Result
		want string
	}{{r1, "100 pvid untagged"}, {r2, "100 pvid untagged"}, {r3, "200 pvid untagged"}} {
		if got := portVlans(t, b.host, hostVethOf(t, tc.res)); !slices.Equal(got, []string{tc.want}) {
			t.Errorf("port %s vlans %v, want [%s]", hostVethOf(t, tc.res), got, tc.want)
		}
	}
	mustPing(t, b.ctx, n1, resultAddr(t, r2, 4).Addr())
	mustNotPing(t, b.ctx, n1, resultAddr(t, r3, 4).Addr(), "VLAN 100 and VLAN 200 on one bridge")
	mustNotPing(t, b.ctx, n2, resultAddr(t, r3, 4).Addr(), "VLAN 100 and VLAN 200 on one bridge")
	b.del(c100, a1)
	b.del(c100, a2)
	b.del(c200, a3)
}

// vlanTrunk makes the container's port carry those VLANs tagged (and VLAN
// 1 untagged as its native VLAN, as upstream does): the container's VLAN
// sub-interface of a trunk VLAN reaches an access port of that VLAN; its
// sub-interface of a VLAN outside the trunk reaches nothing. Needs 802.1q
// too, for the container's sub-interfaces.
func TestVlanTrunk(t *testing.T) {
	t.Parallel()
	lab.RequireKernel(t, lab.KernelVLANFiltering, lab.Kernel8021Q)
	b := newBed(t)
	trunk := b.conflist("bopt-vtrunk", `{"type":"bridge","bridge":"bopt-vtr","vlanTrunk":[{"id":101},{"minID":200,"maxID":202}],
		"ipam":{"type":"host-local","subnet":"10.75.0.0/24"}}`)
	// VLAN v's access port gets an address in 10.<v-25>.0.0/24.
	access := func(network string, vlan int) *lab.Conflist {
		return b.conflist(network, fmt.Sprintf(`{"type":"bridge","bridge":"bopt-vtr","vlan":%d,
			"ipam":{"type":"host-local","subnet":"10.%d.0.0/24"}}`, vlan, vlan-25))
	}
	nt, at := b.container("trunk")
	_, a101 := b.container("v101")
	_, a102 := b.container("v102")
	rt := b.add(trunk, at)
	r101 := b.add(access("bopt-v101", 101), a101)
	r102 := b.add(access("bopt-v102", 102), a102)
	want := []string{"1 pvid untagged", "101", "200", "201", "202"}
	if got := portVlans(t, b.host, hostVethOf(t, rt)); !slices.Equal(got, want) {
		t.Errorf("trunk port vlans %v, want %v", got, want)
	}
	for _, v := range []struct {
		name string
		id   int
		addr string
	}{{"eth0.101", 101, "10.76.0.200/24"}, {"eth0.102", 102, "10.77.0.200/24"}} {
		if err := nt.AddVlan("eth0", v.name, v.id, netip.MustParsePrefix(v.addr)); err != nil {
			t.Fatal(err)
		}
	}
	mustPing(t, b.ctx, nt, resultAddr(t, r101, 4).Addr())
	mustNotPing(t, b.ctx, nt, resultAddr(t, r102, 4).Addr(), "VLAN 102 is not in the trunk")
}

// preserveDefaultVlan keeps VLAN 1 on the port (untagged, no longer its
// pvid); without it the port is in its VLAN only.
func TestVlanPreserveDefault(t *testing.T) {
	t.Parallel()
	lab.RequireKernel(t, lab.KernelVLANFiltering)
	b := newBed(t)
	for _, tc := range []struct {
		preserve bool
		want     []string
	}{{true, []string{"1 untagged", "100 pvid untagged"}}, {false, []string{"100 pvid untagged"}}} {
		c := b.conflist(fmt.Sprintf("bopt-vpres-%v", tc.preserve), fmt.Sprintf(`{"type":"bridge","bridge":"bopt-vpres","vlan":100,
			"preserveDefaultVlan":%v,"ipam":{"type":"host-local","subnet":"10.78.0.0/24"}}`, tc.preserve))
		_, a := b.container(fmt.Sprintf("p%v", tc.preserve))
		res := b.add(c, a)
		if got := portVlans(t, b.host, hostVethOf(t, res)); !slices.Equal(got, tc.want) {
			t.Errorf("preserveDefaultVlan %v: port vlans %v, want %v", tc.preserve, got, tc.want)
		}
		b.del(c, a)
	}
}

// portVlans renders a bridge port's VLANs as `bridge vlan show` does, one
// "vid [pvid] [untagged]" string per VLAN, sorted by vid.
//
// Equivalent: bridge -n $ns vlan show dev $port
func portVlans(t *testing.T, n *lab.NS, port string) []string {
	t.Helper()
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	pl, err := h.LinkByName(port)
	if err != nil {
		t.Fatal(err)
	}
	all, err := h.BridgeVlanList()
	if err != nil {
		t.Fatal(err)
	}
	vs := all[int32(pl.Attrs().Index)]
	slices.SortFunc(vs, func(a, b *nl.BridgeVlanInfo) int { return int(a.Vid) - int(b.Vid) })
	var out []string
	for _, v := range vs {
		s := strconv.Itoa(int(v.Vid))
		if v.PortVID() {
			s += " pvid"
		}
		if v.EngressUntag() {
			s += " untagged"
		}
		out = append(out, s)
	}
	return out
}
