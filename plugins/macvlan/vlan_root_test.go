package main

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/link"
)

// A VLAN sub-interface as the master, named as Docker names them
// ("nic0.50"): the container's macvlan is on it, so it is on VLAN 50 of
// the LAN; the LAN host reaches it over its own eth0.50 and the host over
// the shim, which is on the sub-interface too; CHECK passes; DEL leaves
// the sub-interface as it found it. A VLAN master that does not exist is
// code 103 naming the command that makes it: berth does not create VLAN
// sub-interfaces. Needs 802.1q: where the kernel lacks it, TestMasterErrors
// expects code 100 naming the module instead, and the VM layer runs this.
func TestVlanMaster(t *testing.T) {
	t.Parallel()
	lab.RequireKernel(t, lab.Kernel8021Q)
	b := newBed(t)
	const vlanMaster = masterName + ".50"
	lanVlan4 := netip.MustParsePrefix("192.168.50.1/24")
	if err := b.host.AddVlan(masterName, vlanMaster, 50, netip.MustParsePrefix("192.168.50.2/24")); err != nil {
		t.Fatal(err)
	}
	if err := b.lan.AddVlan("eth0", "eth0.50", 50, lanVlan4); err != nil {
		t.Fatal(err)
	}
	c := b.conf(map[string]any{"master": vlanMaster, "hostShim": true, "promisc": true,
		"ipam": map[string]any{"type": "host-local", "subnet": "192.168.50.0/24", "rangeStart": "192.168.50.200", "gateway": "192.168.50.1"}})
	n, a := b.container("c1")
	res := b.add(c, a)
	ip := resultAddr(t, res, 4)
	if ip.As4()[2] != 50 {
		t.Errorf("container address %s, want one of VLAN 50's subnet", ip)
	}
	mv := macvlanIn(t, n, "eth0")
	if master := nlLink(t, b.host, vlanMaster); mv.ParentIndex != master.Attrs().Index {
		t.Errorf("container eth0's parent is link %d, want %s (%d)", mv.ParentIndex, vlanMaster, master.Attrs().Index)
	}
	mustPing(t, b.ctx, b.lan, ip)
	mustPing(t, b.ctx, n, lanVlan4.Addr())
	mustPing(t, b.ctx, b.host, ip)
	if on, err := b.host.Promisc(vlanMaster); err != nil || !on {
		t.Errorf("master %s promiscuous %v (%v), want on while the container is up", vlanMaster, on, err)
	}
	shim := link.ShimName(vlanMaster)
	if names := b.hostLinks(); !slices.Equal(names, []string{vlanMaster, shim}) {
		t.Errorf("host links %v, want the VLAN master and its shim %s", names, shim)
	}
	if err := b.run.Check(b.ctx, c.List, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	b.del(c, a)
	assertNoLinks(t, n)
	b.assertClean(false, vlanMaster)
	if on, err := b.host.Promisc(vlanMaster); err != nil || on {
		t.Errorf("master %s promiscuous %v (%v) after DEL, want off as before", vlanMaster, on, err)
	}

	n2, a2 := b.container("c2")
	_, err := b.run.Add(b.ctx, b.conf(map[string]any{"master": masterName + ".60"}).List, a2)
	wantCNIError(t, err, 103, `master "nic0.60"`, "VLAN 60", "berth does not create VLAN sub-interfaces",
		"ip link add link nic0 name nic0.60 type vlan id 60")
	assertNoLinks(t, n2)
	b.assertClean(false, vlanMaster)
}
