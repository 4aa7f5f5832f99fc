package vxlan

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/overlay/store"
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

func lease(host, subnet, vtep, mac string) store.Lease {
	l := store.Lease{Host: host, MAC: mac}
	if subnet != "" {
		l.Subnet = netip.MustParsePrefix(subnet)
	}
	if vtep != "" {
		l.VTEP = netip.MustParseAddr(vtep)
	}
	return l
}

func renderPeers(ps []Peer) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.String() + "\n")
	}
	return b.String()
}

func TestPlanPeers(t *testing.T) {
	t.Parallel()
	self := lease("h1", "10.244.1.0/24", "192.168.77.11", "02:00:00:00:00:01")
	h2 := lease("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:02")
	h3 := lease("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:03")
	for _, tc := range []struct {
		name   string
		leases []store.Lease
		want   string
	}{
		{"alone", []store.Lease{self}, ""},
		{"none", nil, ""},
		{"two peers, sorted", []store.Lease{h3, self, h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
h3 10.244.3.0/24 vtep 192.168.77.13 mac 02:00:00:00:00:03
`},
		{"own VTEP under another name is not a peer", []store.Lease{
			lease("h1-old", "10.244.9.0/24", "192.168.77.11", "02:00:00:00:00:09"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"own name with another VTEP is not a peer", []store.Lease{
			lease("h1", "10.244.9.0/24", "192.168.77.99", "02:00:00:00:00:09"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"MAC normalised, subnet masked", []store.Lease{
			lease("h4", "10.244.4.7/24", "192.168.77.14", "02-00-00-00-00-AB")}, `
h4 10.244.4.0/24 vtep 192.168.77.14 mac 02:00:00:00:00:ab
`},
		{"malformed leases are skipped", []store.Lease{
			lease("nosubnet", "", "192.168.77.20", "02:00:00:00:00:20"),
			lease("v6subnet", "fd00:244::/64", "192.168.77.21", "02:00:00:00:00:21"),
			lease("novtep", "10.244.22.0/24", "", "02:00:00:00:00:22"),
			lease("v6vtep", "10.244.23.0/24", "fd00::23", "02:00:00:00:00:23"),
			lease("badmac", "10.244.24.0/24", "192.168.77.24", "nope"),
			lease("longmac", "10.244.25.0/24", "192.168.77.25", "02:00:00:00:00:00:00:25"),
			lease("zeromac", "10.244.26.0/24", "192.168.77.26", "00:00:00:00:00:00"),
			lease("mcastmac", "10.244.27.0/24", "192.168.77.27", "01:00:5e:00:00:27"),
			h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"overlap with self", []store.Lease{lease("x", "10.244.1.0/25", "192.168.77.30", "02:00:00:00:00:30"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"first of two overlapping wins", []store.Lease{
			lease("late", "10.244.2.128/25", "192.168.77.31", "02:00:00:00:00:31"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"duplicate MAC", []store.Lease{h2, lease("dup", "10.244.5.0/24", "192.168.77.32", "02:00:00:00:00:02")}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
	} {
		got := renderPeers(PlanPeers(self, tc.leases))
		if want := strings.TrimPrefix(tc.want, "\n"); got != want {
			t.Errorf("%s:\ngot:\n%swant:\n%s", tc.name, got, want)
		}
	}
	// A host without a lease yet: no local subnet to avoid, its own
	// entries still excluded by name.
	got := renderPeers(PlanPeers(store.Lease{Host: "h1"}, []store.Lease{self, h2}))
	if got != "h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02\n" {
		t.Errorf("self without a lease: %q", got)
	}
}

func peer(host, subnet, vtep, mac string) Peer {
	return Peer{Host: host, Subnet: netip.MustParsePrefix(subnet), VTEP: netip.MustParseAddr(vtep), MAC: mac}
}

func TestPlanSync(t *testing.T) {
	t.Parallel()
	local := netip.MustParsePrefix("10.244.1.0/24")
	p2 := peer("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:02")
	p3 := peer("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:03")
	both := WantEntries([]Peer{p2, p3})
	for _, tc := range []struct {
		name    string
		desired []Peer
		have    Entries
		plan    string
		stats   SyncStats
	}{
		{"empty", nil, Entries{}, "", SyncStats{}},
		{"from scratch", []Peer{p2, p3}, Entries{}, `
set fdb 02:00:00:00:00:02 dst 192.168.77.12
set fdb 02:00:00:00:00:03 dst 192.168.77.13
set neigh 10.244.2.0 lladdr 02:00:00:00:00:02 permanent
set neigh 10.244.3.0 lladdr 02:00:00:00:00:03 permanent
set route 10.244.2.0/24 via 10.244.2.0 onlink
set route 10.244.3.0/24 via 10.244.3.0 onlink
`, SyncStats{Peers: 2, Added: 6}},
		{"in sync", []Peer{p2, p3}, both, "", SyncStats{Peers: 2}},
		{"peer gone", []Peer{p2}, both, `
del route 10.244.3.0/24 via 10.244.3.0 onlink
del neigh 10.244.3.0 lladdr 02:00:00:00:00:03 permanent
del fdb 02:00:00:00:00:03 dst 192.168.77.13
`, SyncStats{Peers: 1, Deleted: 3}},
		{"all gone", nil, both, `
del route 10.244.2.0/24 via 10.244.2.0 onlink
del route 10.244.3.0/24 via 10.244.3.0 onlink
del neigh 10.244.2.0 lladdr 02:00:00:00:00:02 permanent
del neigh 10.244.3.0 lladdr 02:00:00:00:00:03 permanent
del fdb 02:00:00:00:00:02 dst 192.168.77.12
del fdb 02:00:00:00:00:03 dst 192.168.77.13
`, SyncStats{Deleted: 6}},
		{"peer moved to another VTEP", []Peer{peer("h2", "10.244.2.0/24", "192.168.77.22", "02:00:00:00:00:02")},
			WantEntries([]Peer{p2}), `
del fdb 02:00:00:00:00:02 dst 192.168.77.12
set fdb 02:00:00:00:00:02 dst 192.168.77.22
`, SyncStats{Peers: 1, Replaced: 1}},
		{"peer recreated its device (new MAC)", []Peer{peer("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:22")},
			WantEntries([]Peer{p2}), `
del fdb 02:00:00:00:00:02 dst 192.168.77.12
set fdb 02:00:00:00:00:22 dst 192.168.77.12
set neigh 10.244.2.0 lladdr 02:00:00:00:00:22 permanent
`, SyncStats{Peers: 1, Added: 1, Replaced: 1, Deleted: 1}},
		{"a MAC with an extra remote", []Peer{p2}, Entries{
			Routes: both.Routes[:1], Neighs: both.Neighs[:1],
			FDB: []FDB{{MAC: p2.MAC, Dst: netip.MustParseAddr("192.168.77.99")}, {MAC: p2.MAC, Dst: p2.VTEP}},
		}, `
del fdb 02:00:00:00:00:02 dst 192.168.77.99
`, SyncStats{Peers: 1, Deleted: 1}},
		{"route without onlink, a second route with a metric", []Peer{p2}, Entries{
			Routes: []Route{
				{Dst: p2.Subnet, Via: p2.Addr()},
				{Dst: p2.Subnet, Via: p2.Addr(), Onlink: true, Metric: 100},
			},
			Neighs: both.Neighs[:1], FDB: both.FDB[:1],
		}, `
del route 10.244.2.0/24 via 10.244.2.0 onlink metric 100
set route 10.244.2.0/24 via 10.244.2.0 onlink
`, SyncStats{Peers: 1, Replaced: 1, Deleted: 1}},
		{"a kernel neighbour is left alone, one a peer needs is made permanent", []Peer{p2}, Entries{
			Routes: both.Routes[:1],
			Neighs: []Neigh{
				{IP: p2.Addr(), MAC: p2.MAC},
				{IP: netip.MustParseAddr("10.244.7.0"), MAC: "00:00:00:00:00:00"},
			},
			FDB: both.FDB[:1],
		}, `
set neigh 10.244.2.0 lladdr 02:00:00:00:00:02 permanent
`, SyncStats{Peers: 1, Replaced: 1}},
		{"the local subnet is left alone", []Peer{peer("bogus", "10.244.1.0/24", "192.168.77.50", "02:00:00:00:00:50")}, Entries{
			Routes: []Route{{Dst: netip.MustParsePrefix("10.244.1.0/24")}, {Dst: netip.MustParsePrefix("10.244.1.128/25"), Via: netip.MustParseAddr("10.244.1.1")}},
			Neighs: []Neigh{{IP: netip.MustParseAddr("10.244.1.5"), MAC: "02:00:00:00:00:05", Permanent: true}},
		}, "", SyncStats{}},
		{"a stray default route on the device goes", nil, Entries{
			Routes: []Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: netip.MustParseAddr("10.244.9.0"), Onlink: true}},
		}, `
del route 0.0.0.0/0 via 10.244.9.0 onlink
`, SyncStats{Deleted: 1}},
	} {
		p := planSync(tc.desired, tc.have, local)
		if want := strings.TrimPrefix(tc.plan, "\n"); p.String() != want {
			t.Errorf("%s: plan:\n%swant:\n%s", tc.name, p, want)
		}
		if p.stats != tc.stats {
			t.Errorf("%s: stats %+v, want %+v", tc.name, p.stats, tc.stats)
		}
	}
}

func TestEntriesString(t *testing.T) {
	t.Parallel()
	e := WantEntries([]Peer{
		peer("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:03"),
		peer("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:02"),
	})
	want := `fdb 02:00:00:00:00:02 dst 192.168.77.12
fdb 02:00:00:00:00:03 dst 192.168.77.13
neigh 10.244.2.0 lladdr 02:00:00:00:00:02 permanent
neigh 10.244.3.0 lladdr 02:00:00:00:00:03 permanent
route 10.244.2.0/24 via 10.244.2.0 onlink
route 10.244.3.0/24 via 10.244.3.0 onlink
`
	if got := e.String(); got != want {
		t.Errorf("Entries.String:\n%swant:\n%s", got, want)
	}
	if (Entries{}).String() != "" {
		t.Error("empty Entries render as non-empty text")
	}
}
