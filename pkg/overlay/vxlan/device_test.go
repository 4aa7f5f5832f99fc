package vxlan

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
)

func TestDeviceName(t *testing.T) {
	t.Parallel()
	// The scheme is an API (a restarted agent, and the plugin, find the
	// device by it): these values must never change.
	if got := DeviceName("overlay"); got != "bvxb4b33d2441" {
		t.Fatalf("DeviceName changed: %q", got)
	}
	if got := DeviceName("net1"); got != "bvx6c270ef2f2" {
		t.Fatalf("DeviceName changed: %q", got)
	}
	long := DeviceName(strings.Repeat("n", 200))
	if len(long) != 13 || !strings.HasPrefix(long, DevicePrefix) {
		t.Fatalf("DeviceName of a long network = %q, want 13 bytes starting %q", long, DevicePrefix)
	}
}

func TestIncompatible(t *testing.T) {
	t.Parallel()
	spec := DeviceSpec{Name: "bvx0", VNI: 7, Local: netip.MustParseAddr("192.168.77.11"), Underlay: 3}
	good := func() *netlink.Vxlan {
		return &netlink.Vxlan{VxlanId: 7, Port: 4789, SrcAddr: net.ParseIP("192.168.77.11"), VtepDevIndex: 3}
	}
	for _, tc := range []struct {
		name string
		edit func(v *netlink.Vxlan)
		want string
	}{
		{"same", func(*netlink.Vxlan) {}, ""},
		{"mtu and flags do not count", func(v *netlink.Vxlan) { v.MTU = 9000; v.Flags = 0 }, ""},
		{"vni", func(v *netlink.Vxlan) { v.VxlanId = 8 }, "vni 8, want 7"},
		{"port", func(v *netlink.Vxlan) { v.Port = 8472 }, "dstport 8472, want 4789"},
		{"local", func(v *netlink.Vxlan) { v.SrcAddr = net.ParseIP("192.168.77.12") }, "local 192.168.77.12, want 192.168.77.11"},
		{"no local", func(v *netlink.Vxlan) { v.SrcAddr = nil }, "local <nil>, want 192.168.77.11"},
		{"underlay", func(v *netlink.Vxlan) { v.VtepDevIndex = 4 }, "dev index 4, want 3"},
		{"learning", func(v *netlink.Vxlan) { v.Learning = true }, "learning on"},
		{"external", func(v *netlink.Vxlan) { v.FlowBased = true }, "external (flow based)"},
		{"group", func(v *netlink.Vxlan) { v.Group = net.ParseIP("239.1.1.1") }, "group 239.1.1.1"},
		{"two", func(v *netlink.Vxlan) { v.VxlanId = 1; v.Learning = true }, "vni 1, want 7, learning on"},
	} {
		v := good()
		tc.edit(v)
		if got := incompatible(v, spec); got != tc.want {
			t.Errorf("%s: incompatible = %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := incompatible(&netlink.Bridge{}, spec); got != "it is a bridge, not a vxlan" {
		t.Errorf("bridge: incompatible = %q", got)
	}
	spec.Port = 8472
	if got := incompatible(good(), spec); got != "dstport 4789, want 8472" {
		t.Errorf("port 8472: incompatible = %q", got)
	}
}

func TestSpecValidate(t *testing.T) {
	t.Parallel()
	ok := DeviceSpec{Name: "bvx0", VNI: 1, Local: netip.MustParseAddr("10.0.0.1"), Underlay: 2}
	if err := ok.validate(); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(*DeviceSpec){
		"no name":     func(s *DeviceSpec) { s.Name = "" },
		"long name":   func(s *DeviceSpec) { s.Name = "bvx0123456789abc" },
		"slash":       func(s *DeviceSpec) { s.Name = "bvx/0" },
		"vni 0":       func(s *DeviceSpec) { s.VNI = 0 },
		"vni 2^24":    func(s *DeviceSpec) { s.VNI = 1 << 24 },
		"v6 local":    func(s *DeviceSpec) { s.Local = netip.MustParseAddr("fd00::1") },
		"no local":    func(s *DeviceSpec) { s.Local = netip.Addr{} },
		"no underlay": func(s *DeviceSpec) { s.Underlay = 0 },
		"mtu":         func(s *DeviceSpec) { s.MTU = -1 },
		"v6 subnet":   func(s *DeviceSpec) { s.Subnet = netip.MustParsePrefix("fd00::/64") },
	} {
		s := ok
		edit(&s)
		if err := s.validate(); err == nil {
			t.Errorf("%s: validate accepted %+v", name, s)
		}
	}
	s := ok
	s.Subnet = netip.MustParsePrefix("10.244.3.0/24")
	if got := s.Addr(); got != netip.MustParsePrefix("10.244.3.0/32") {
		t.Errorf("Addr = %s, want 10.244.3.0/32", got)
	}
}
