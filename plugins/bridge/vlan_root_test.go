package main

import (
	"net/netip"
	"slices"
	"testing"

	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink/nl"

	"github.com/berth-cni/berth/pkg/link"
)

// With vlan and isGateway the gateway address goes on "<bridge>.<vlan>",
// whose peer is a bridge port in that VLAN (pvid, untagged), as upstream
// does; the container reaches it; the result lists it. Needs bridge VLAN
// filtering (this machine's kernel lacks it: TestVlanNeedsFiltering
// covers that case; the VM layer runs this one).
func TestVlanGateway(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	if !vlanFilteringWorks(t, b.host) {
		t.Skip("this kernel has no bridge VLAN filtering (vlan_filtering 1: operation not supported)")
	}
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
	h, err := b.host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	vlans, err := h.BridgeVlanList()
	if err != nil {
		t.Fatal(err)
	}
	pl, err := h.LinkByName(port)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(vlans[int32(pl.Attrs().Index)], func(v *nl.BridgeVlanInfo) bool {
		return v.Vid == uint16(vlan) && v.PortVID() && v.EngressUntag()
	}) {
		t.Errorf("port %s vlans %v, want %d pvid untagged", port, vlans[int32(pl.Attrs().Index)], vlan)
	}
	mustPing(t, b.ctx, n, want.Addr())
	b.del(c, a)
}
