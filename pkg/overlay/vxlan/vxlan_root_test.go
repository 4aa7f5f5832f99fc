package vxlan

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/overlay/peerplan"
)

// hostNS is a "host" namespace for one test: a veth pair stands in for its
// NIC (the kernel here has no dummy links), ul0 with 192.168.77.11/24 and
// the default route via 192.168.77.1. It is removed in t.Cleanup.
func hostNS(t *testing.T) (*lab.NS, *netns.NS) {
	t.Helper()
	lab.RequireRoot(t)
	ctx := context.Background()
	h, err := lab.NewNS(ctx, "bov-"+lab.RandomSuffix(8))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if derr := h.Delete(); derr != nil {
			t.Error(derr)
		}
	})
	err = lab.Veth(
		lab.VethEnd{NS: h, Name: "ul0", Addrs: []netip.Prefix{netip.MustParsePrefix("192.168.77.11/24")}},
		lab.VethEnd{NS: h, Name: "ul1"},
	)
	if err != nil {
		t.Fatal(err)
	}
	if err = h.AddDefaultRoute(netip.MustParseAddr("192.168.77.1")); err != nil {
		t.Fatal(err)
	}
	n, err := netns.Open(h.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return h, n
}

// ipText runs `ip`/`bridge` in the namespace and returns its output.
func ipText(t *testing.T, h *lab.NS, cmd string, args ...string) string {
	t.Helper()
	out, err := h.Output(context.Background(), cmd, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// ipLink is what `ip -d -j link show` says of a vxlan device.
type ipLink struct {
	Ifindex  int      `json:"ifindex"`
	MTU      int      `json:"mtu"`
	Address  string   `json:"address"`
	Alias    string   `json:"ifalias"`
	Flags    []string `json:"flags"`
	Linkinfo struct {
		Kind string `json:"info_kind"`
		Data struct {
			ID       int    `json:"id"`
			Local    string `json:"local"`
			Link     string `json:"link"`
			Port     int    `json:"port"`
			Learning bool   `json:"learning"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func showLink(t *testing.T, h *lab.NS, name string) ipLink {
	t.Helper()
	var ls []ipLink
	if err := json.Unmarshal([]byte(ipText(t, h, "ip", "-d", "-j", "link", "show", "dev", name)), &ls); err != nil || len(ls) != 1 {
		t.Fatalf("ip -d -j link show dev %s: %v (%d links)", name, err, len(ls))
	}
	return ls[0]
}

func TestUnderlay(t *testing.T) {
	h, n := hostNS(t)
	u, err := FindUnderlay(n, "")
	if err != nil {
		t.Fatal(err)
	}
	ul0, err := h.LinkByName("ul0")
	if err != nil {
		t.Fatal(err)
	}
	want := Underlay{Name: "ul0", Index: ul0.Index, MTU: 1500, Addr: netip.MustParseAddr("192.168.77.11")}
	if u != want {
		t.Fatalf("FindUnderlay(\"\") = %+v, want %+v", u, want)
	}
	// Named, without an address: found, no VTEP.
	u, err = FindUnderlay(n, "ul1")
	if err != nil || u.Name != "ul1" || u.Addr.IsValid() {
		t.Fatalf("FindUnderlay(ul1) = %+v, %v; want ul1 without address", u, err)
	}
	if _, err := FindUnderlay(n, "nope0"); err == nil {
		t.Fatal("FindUnderlay(nope0) found a link")
	}
	if _, err := h.Output(context.Background(), "ip", "route", "del", "default"); err != nil {
		t.Fatal(err)
	}
	_, err = FindUnderlay(n, "")
	if !errors.Is(err, ErrNoDefaultRoute) || !errors.Is(err, link.ErrNoDefaultRoute) ||
		!strings.Contains(err.Error(), "no IPv4 default route (name one)") {
		t.Fatalf("FindUnderlay without a default route: %v; want ErrNoDefaultRoute, saying to name one", err)
	}
}

func TestEnsureDevice(t *testing.T) {
	h, n := hostNS(t)
	u, err := FindUnderlay(n, "")
	if err != nil {
		t.Fatal(err)
	}
	spec := DeviceSpec{Name: DeviceName("t1"), VNI: 42, Local: u.Addr, Underlay: u.Index, Alias: AliasFor("t1")}

	// Before the agent has a lease: the device, no address.
	d, err := EnsureDevice(n, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !d.Created || d.Replaced != "" || d.MTU != 1450 || len(d.MAC) != 6 {
		t.Fatalf("first EnsureDevice = %+v, want created, mtu 1450 (1500 − 50), a MAC", d)
	}
	l := showLink(t, h, spec.Name)
	if l.Linkinfo.Kind != "vxlan" || l.Linkinfo.Data.ID != 42 || l.Linkinfo.Data.Port != 4789 ||
		l.Linkinfo.Data.Local != "192.168.77.11" || l.Linkinfo.Data.Learning || l.Linkinfo.Data.Link != "ul0" {
		t.Fatalf("device as ip shows it: %+v", l)
	}
	if !strings.Contains(strings.Join(l.Flags, ","), "UP") || l.Address != d.MAC.String() || l.Ifindex != d.Index || l.Alias != "berth:overlay/t1" {
		t.Fatalf("device not up or other MAC/index: %+v vs %+v", l, d)
	}
	if got := ipText(t, h, "ip", "-4", "-br", "addr", "show", "dev", spec.Name); strings.Contains(got, "/") {
		t.Fatalf("device without a lease has an address: %q", got)
	}

	// With the lease: same device, the /32, the MTU; a stray address goes.
	ipText(t, h, "ip", "addr", "add", "10.9.9.9/24", "dev", spec.Name)
	ipText(t, h, "ip", "link", "set", spec.Name, "alias", "someone else's")
	if err = h.LinkDown(spec.Name); err != nil {
		t.Fatal(err)
	}
	spec.Subnet = netip.MustParsePrefix("10.244.3.0/24")
	spec.MTU = 1400
	d2, err := EnsureDevice(n, spec)
	if err != nil {
		t.Fatal(err)
	}
	if d2.Created || d2.Index != d.Index || d2.MAC.String() != d.MAC.String() || d2.MTU != 1400 || d2.Subnet != spec.Subnet {
		t.Fatalf("second EnsureDevice = %+v, want the same device (%+v) with mtu 1400", d2, d)
	}
	if got := ipText(t, h, "ip", "-4", "-o", "addr", "show", "dev", spec.Name); !strings.Contains(got, "inet 10.244.3.0/32 ") || strings.Count(got, "inet ") != 1 {
		t.Fatalf("addresses: %q, want exactly 10.244.3.0/32", got)
	}
	if l := showLink(t, h, spec.Name); !strings.Contains(strings.Join(l.Flags, ","), "UP") || l.MTU != 1400 || l.Alias != "berth:overlay/t1" {
		t.Fatalf("device after second ensure: %+v", l)
	}
	// A third call changes nothing.
	if d3, err3 := EnsureDevice(n, spec); err3 != nil || d3.Index != d.Index || d3.Created {
		t.Fatalf("third EnsureDevice = %+v, %v", d3, err3)
	}

	// Another VNI cannot be changed in place: a new device.
	spec.VNI = 43
	d4, err := EnsureDevice(n, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !d4.Created || d4.Replaced != "vni 42, want 43" {
		t.Fatalf("EnsureDevice with another VNI = %+v, want recreated because of the vni", d4)
	}
	if l := showLink(t, h, spec.Name); l.Linkinfo.Data.ID != 43 || l.MTU != 1400 {
		t.Fatalf("recreated device: %+v", l)
	}

	// Delete: idempotent; refuses a link of the name that is no vxlan.
	for range 2 {
		if err := DeleteDevice(n, spec.Name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.LinkByName(spec.Name); err == nil {
		t.Fatal("device still there after DeleteDevice")
	}
	if err := DeleteDevice(n, "ul1"); err == nil {
		t.Fatal("DeleteDevice removed a veth")
	}
}

func TestSyncPeers(t *testing.T) {
	h, n := hostNS(t)
	u, err := FindUnderlay(n, "")
	if err != nil {
		t.Fatal(err)
	}
	spec := DeviceSpec{Name: DeviceName("t2"), VNI: 1, Local: u.Addr, Underlay: u.Index, Subnet: netip.MustParsePrefix("10.244.1.0/24")}
	d, err := EnsureDevice(n, spec)
	if err != nil {
		t.Fatal(err)
	}
	p2 := peer("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:02")
	p3 := peer("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:03")

	// state renders the device's entries as ip and bridge print them,
	// independently of the package's reader, sorted.
	state := func() string {
		t.Helper()
		var lines []string
		for _, out := range []string{
			ipText(t, h, "ip", "-4", "route", "show", "dev", d.Name),
			ipText(t, h, "ip", "-4", "neigh", "show", "dev", d.Name),
			ipText(t, h, "bridge", "fdb", "show", "dev", d.Name),
		} {
			for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
				if l = strings.TrimSpace(l); l != "" {
					lines = append(lines, l)
				}
			}
		}
		slices.Sort(lines)
		return strings.Join(lines, "\n")
	}
	sync := func(want peerplan.SyncStats, peers ...peerplan.Peer) {
		t.Helper()
		got, err := SyncPeers(n, d, peers)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("SyncPeers(%v) = %+v, want %+v", peers, got, want)
		}
		e, err := Entries(n, d)
		if err != nil {
			t.Fatal(err)
		}
		e.Routes = slices.DeleteFunc(e.Routes, func(r peerplan.Route) bool { return d.Subnet.Contains(r.Dst.Addr()) })
		if got, want := e.String(), peerplan.WantEntries(peers).String(); got != want {
			t.Fatalf("entries after sync:\n%swant:\n%s", got, want)
		}
	}

	sync(peerplan.SyncStats{Peers: 2, Added: 6}, p2, p3)
	want := `02:00:00:00:00:02 dst 192.168.77.12 self permanent
02:00:00:00:00:03 dst 192.168.77.13 self permanent
10.244.2.0 lladdr 02:00:00:00:00:02 PERMANENT
10.244.2.0/24 via 10.244.2.0 onlink
10.244.3.0 lladdr 02:00:00:00:00:03 PERMANENT
10.244.3.0/24 via 10.244.3.0 onlink`
	if got := state(); got != want {
		t.Fatalf("kernel state:\n%s\nwant:\n%s", got, want)
	}
	sync(peerplan.SyncStats{Peers: 2}, p2, p3)

	// Strays on the device go; a route inside the local subnet stays.
	for _, cmd := range [][]string{
		{"ip", "route", "add", "10.244.1.128/25", "dev", d.Name},
		{"ip", "route", "add", "10.244.9.0/24", "via", "10.244.9.0", "dev", d.Name, "onlink"},
		{"ip", "neigh", "add", "10.244.9.0", "lladdr", "02:00:00:00:00:09", "dev", d.Name, "nud", "permanent"},
		{"bridge", "fdb", "append", "02:00:00:00:00:09", "dev", d.Name, "dst", "192.168.77.19", "self", "permanent"},
		// A default (flood) entry: learning off, no multicast, none wanted.
		{"bridge", "fdb", "append", "00:00:00:00:00:00", "dev", d.Name, "dst", "192.168.77.99", "self", "permanent"},
	} {
		ipText(t, h, cmd[0], cmd[1:]...)
	}
	sync(peerplan.SyncStats{Peers: 2, Deleted: 4}, p2, p3)
	withLocal := strings.Split(want+"\n10.244.1.128/25 scope link", "\n")
	slices.Sort(withLocal)
	if got := state(); got != strings.Join(withLocal, "\n") {
		t.Fatalf("kernel state after removing strays:\n%s\nwant the local route and:\n%s", got, want)
	}

	// h3 recreated its device: new MAC. h2 moved to another VTEP.
	p3b := peer("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:33")
	p2b := peer("h2", "10.244.2.0/24", "192.168.77.22", "02:00:00:00:00:02")
	sync(peerplan.SyncStats{Peers: 2, Added: 1, Replaced: 2, Deleted: 1}, p2b, p3b)

	// h2 left.
	sync(peerplan.SyncStats{Peers: 1, Deleted: 3}, p3b)
	// Everyone left; the local route is still there.
	sync(peerplan.SyncStats{Deleted: 3})
	if got := state(); got != "10.244.1.128/25 scope link" {
		t.Fatalf("kernel state with no peers: %q", got)
	}
}

func peer(host, subnet, vtep, mac string) peerplan.Peer {
	return peerplan.Peer{Host: host, Subnet: netip.MustParsePrefix(subnet), VTEP: netip.MustParseAddr(vtep), MAC: mac}
}

// ApplyPeers, which changes the device from the peers of the last sync to
// the new ones without reading it back, leaves the kernel as SyncPeers
// would: a peer added, one moved to another VTEP and MAC, one removed.
func TestApplyPeers(t *testing.T) {
	_, n := hostNS(t)
	u, err := FindUnderlay(n, "")
	if err != nil {
		t.Fatal(err)
	}
	spec := DeviceSpec{Name: DeviceName("t3"), VNI: 3, Local: u.Addr, Underlay: u.Index, Subnet: netip.MustParsePrefix("10.244.1.0/24")}
	d, err := EnsureDevice(n, spec)
	if err != nil {
		t.Fatal(err)
	}
	entries := func() string {
		t.Helper()
		e, err := Entries(n, d)
		if err != nil {
			t.Fatal(err)
		}
		e.Routes = slices.DeleteFunc(e.Routes, func(r peerplan.Route) bool { return d.Subnet.Contains(r.Dst.Addr()) })
		return e.String()
	}
	p2 := peer("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:02")
	p3 := peer("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:03")
	p3moved := peer("h3", "10.244.3.0/24", "192.168.77.23", "02:00:00:00:00:33")
	p4 := peer("h4", "10.244.4.0/24", "192.168.77.14", "02:00:00:00:00:04")
	steps := [][]peerplan.Peer{{p2, p3}, {p2, p3, p4}, {p2, p3moved, p4}, {p3moved}, {}}
	var old []peerplan.Peer
	for i, want := range steps {
		stats, err := ApplyPeers(n, d, old, want)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		if got, w := entries(), peerplan.WantEntries(want).String(); got != w {
			t.Fatalf("step %d (%+v): entries\n%swant\n%s", i, stats, got, w)
		}
		// A sync that reads the kernel back finds nothing to do.
		if again, err := SyncPeers(n, d, want); err != nil || again.Changed() {
			t.Fatalf("step %d: SyncPeers after ApplyPeers changed %+v, %v", i, again, err)
		}
		old = want
	}
}
