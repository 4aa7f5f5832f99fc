package peerplan

import (
	"net/netip"
	"strings"
	"testing"
)

// candidate is a peer as the agent makes it from a lease: as stored,
// not yet checked or normalised; "" leaves a subnet or VTEP unset.
func candidate(host, subnet, vtep, mac string) Peer {
	c := Peer{Host: host, MAC: mac}
	if subnet != "" {
		c.Subnet = netip.MustParsePrefix(subnet)
	}
	if vtep != "" {
		c.VTEP = netip.MustParseAddr(vtep)
	}
	return c
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
	self := candidate("h1", "10.244.1.0/24", "192.168.77.11", "02:00:00:00:00:01")
	h2 := candidate("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:02")
	h3 := candidate("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:03")
	for _, tc := range []struct {
		name       string
		candidates []Peer
		want       string
	}{
		{"alone", []Peer{self}, ""},
		{"none", nil, ""},
		{"two peers, sorted", []Peer{h3, self, h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
h3 10.244.3.0/24 vtep 192.168.77.13 mac 02:00:00:00:00:03
`},
		{"own VTEP under another name is not a peer", []Peer{
			candidate("h1-old", "10.244.9.0/24", "192.168.77.11", "02:00:00:00:00:09"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"own name with another VTEP is not a peer", []Peer{
			candidate("h1", "10.244.9.0/24", "192.168.77.99", "02:00:00:00:00:09"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"MAC normalised, subnet masked", []Peer{
			candidate("h4", "10.244.4.7/24", "192.168.77.14", "02-00-00-00-00-AB")}, `
h4 10.244.4.0/24 vtep 192.168.77.14 mac 02:00:00:00:00:ab
`},
		{"malformed leases are skipped", []Peer{
			candidate("nosubnet", "", "192.168.77.20", "02:00:00:00:00:20"),
			candidate("v6subnet", "fd00:244::/64", "192.168.77.21", "02:00:00:00:00:21"),
			candidate("novtep", "10.244.22.0/24", "", "02:00:00:00:00:22"),
			candidate("v6vtep", "10.244.23.0/24", "fd00::23", "02:00:00:00:00:23"),
			candidate("badmac", "10.244.24.0/24", "192.168.77.24", "nope"),
			candidate("longmac", "10.244.25.0/24", "192.168.77.25", "02:00:00:00:00:00:00:25"),
			candidate("zeromac", "10.244.26.0/24", "192.168.77.26", "00:00:00:00:00:00"),
			candidate("mcastmac", "10.244.27.0/24", "192.168.77.27", "01:00:5e:00:00:27"),
			h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"overlap with self", []Peer{candidate("x", "10.244.1.0/25", "192.168.77.30", "02:00:00:00:00:30"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"first of two overlapping wins", []Peer{
			candidate("late", "10.244.2.128/25", "192.168.77.31", "02:00:00:00:00:31"), h2}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
		{"duplicate MAC", []Peer{h2, candidate("dup", "10.244.5.0/24", "192.168.77.32", "02:00:00:00:00:02")}, `
h2 10.244.2.0/24 vtep 192.168.77.12 mac 02:00:00:00:00:02
`},
	} {
		got := renderPeers(PlanPeers(self, tc.candidates))
		if want := strings.TrimPrefix(tc.want, "\n"); got != want {
			t.Errorf("%s:\ngot:\n%swant:\n%s", tc.name, got, want)
		}
	}
	// A host without a lease yet: no local subnet to avoid, its own
	// entries still excluded by name.
	got := renderPeers(PlanPeers(Peer{Host: "h1"}, []Peer{self, h2}))
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
		p := PlanSync(tc.desired, tc.have, local)
		if want := strings.TrimPrefix(tc.plan, "\n"); p.String() != want {
			t.Errorf("%s: plan:\n%swant:\n%s", tc.name, p, want)
		}
		if p.Stats != tc.stats {
			t.Errorf("%s: stats %+v, want %+v", tc.name, p.Stats, tc.stats)
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
