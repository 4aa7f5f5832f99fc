package agent

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/peerplan"
	"github.com/berth-cni/berth/pkg/overlay/store"
)

func TestMetrics(t *testing.T) {
	t.Parallel()
	var b strings.Builder
	writeMetrics(&b, snapshot{
		Network: `ov"1`, VNI: 42, Subnet: netip.MustParsePrefix("10.244.3.0/24"), Ready: true, Peers: 2,
		Syncs: 7, SyncErrors: 1, StoreErrors: 3, LeaseLost: 1,
		Acks: 4, AckPending: []string{"h5"}, AckLate: []string{"h2", `h"3`}, AckWait: 1500 * time.Millisecond, AckTimeouts: 1,
	})
	want := `# HELP berth_overlay_ready 1 while the agent holds its lease and has programmed its peers, else 0.
# TYPE berth_overlay_ready gauge
berth_overlay_ready{network="ov\"1"} 1
# HELP berth_overlay_peers Remote hosts programmed on the VXLAN device.
# TYPE berth_overlay_peers gauge
berth_overlay_peers{network="ov\"1"} 2
# HELP berth_overlay_syncs_total Successful syncs of the peers into the kernel.
# TYPE berth_overlay_syncs_total counter
berth_overlay_syncs_total{network="ov\"1"} 7
# HELP berth_overlay_sync_errors_total Syncs of the peers into the kernel that failed.
# TYPE berth_overlay_sync_errors_total counter
berth_overlay_sync_errors_total{network="ov\"1"} 1
# HELP berth_overlay_store_errors_total Failed calls to the cluster store.
# TYPE berth_overlay_store_errors_total counter
berth_overlay_store_errors_total{network="ov\"1"} 3
# HELP berth_overlay_lease_lost_total Times the subnet lease was lost and had to be acquired again.
# TYPE berth_overlay_lease_lost_total counter
berth_overlay_lease_lost_total{network="ov\"1"} 1
# HELP berth_overlay_acks_total Acknowledgements this host published for peers waiting for them.
# TYPE berth_overlay_acks_total counter
berth_overlay_acks_total{network="ov\"1"} 4
# HELP berth_overlay_ack_pending Peers the running wait for acknowledgements of this host's lease still waits for.
# TYPE berth_overlay_ack_pending gauge
berth_overlay_ack_pending{network="ov\"1"} 1
# HELP berth_overlay_ack_wait_seconds How long the last wait for the peers' acknowledgements of this host's lease took.
# TYPE berth_overlay_ack_wait_seconds gauge
berth_overlay_ack_wait_seconds{network="ov\"1"} 1.5
# HELP berth_overlay_ack_timeouts_total Waits for acknowledgements that gave up on a peer after the bound.
# TYPE berth_overlay_ack_timeouts_total counter
berth_overlay_ack_timeouts_total{network="ov\"1"} 1
# HELP berth_overlay_ack_late_peers Peers that did not acknowledge this host's lease within the bound, in the last wait.
# TYPE berth_overlay_ack_late_peers gauge
berth_overlay_ack_late_peers{network="ov\"1"} 2
# HELP berth_overlay_ack_late Each of the first 100 peers that did not acknowledge this host's lease within the bound, in the last wait.
# TYPE berth_overlay_ack_late gauge
berth_overlay_ack_late{network="ov\"1",peer="h2"} 1
berth_overlay_ack_late{network="ov\"1",peer="h\"3"} 1
# HELP berth_overlay_info The agent's network, leased subnet and VNI.
# TYPE berth_overlay_info gauge
berth_overlay_info{network="ov\"1",subnet="10.244.3.0/24",vni="42"} 1
`
	if got := b.String(); got != want {
		t.Errorf("metrics:\n%s\nwant:\n%s", got, want)
	}
	b.Reset()
	writeMetrics(&b, snapshot{Network: "ov", VNI: 1})
	for _, line := range []string{`berth_overlay_ready{network="ov"} 0`, `berth_overlay_info{network="ov",subnet="",vni="1"} 1`} {
		if !strings.Contains(b.String(), line+"\n") {
			t.Errorf("metrics before a lease lack %q:\n%s", line, b.String())
		}
	}
	if got := escapeLabel("a\\b\nc\"d"); got != `a\\b\nc\"d` {
		t.Errorf("escapeLabel = %q", got)
	}
}

func TestHealthz(t *testing.T) {
	t.Parallel()
	var st status
	st.network, st.reason = "ov", "starting"
	srv := httptest.NewServer(st.handler())
	defer srv.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 503 || body != "starting\n" {
		t.Errorf("healthz while starting: %d %q", code, body)
	}
	st.update(func(s *status) { s.reason = "" })
	if code, body := get("/healthz"); code != 503 || body != "not ready\n" {
		t.Errorf("healthz not ready without a reason: %d %q", code, body)
	}
	st.update(func(s *status) { s.ready, s.peers = true, 3 })
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("healthz when ready: %d %q", code, body)
	}
	if code, body := get("/metrics"); code != 200 || !strings.Contains(body, "berth_overlay_peers{network=\"ov\"} 3\n") {
		t.Errorf("metrics: %d\n%s", code, body)
	}
	if code, _ := get("/other"); code != 404 {
		t.Errorf("/other: %d, want 404", code)
	}
}

func TestDiffPeers(t *testing.T) {
	t.Parallel()
	p := func(host, subnet, vtep, mac string) peerplan.Peer {
		return peerplan.Peer{Host: host, Subnet: netip.MustParsePrefix(subnet), VTEP: netip.MustParseAddr(vtep), MAC: mac}
	}
	h2 := p("h2", "10.244.2.0/24", "192.168.77.12", "02:00:00:00:00:02")
	h3 := p("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:03")
	h3b := p("h3", "10.244.3.0/24", "192.168.77.13", "02:00:00:00:00:33")
	h4 := p("h4", "10.244.4.0/24", "192.168.77.14", "02:00:00:00:00:04")
	got := strings.Join(diffPeers([]peerplan.Peer{h2, h3}, []peerplan.Peer{h3b, h4}), "\n")
	want := `peer changed: host h3 subnet 10.244.3.0/24 vtep 192.168.77.13 mac 02:00:00:00:00:33 (was host h3 vtep 192.168.77.13 mac 02:00:00:00:00:03)
peer added: host h4 subnet 10.244.4.0/24 vtep 192.168.77.14 mac 02:00:00:00:00:04
peer removed: host h2 subnet 10.244.2.0/24`
	if got != want {
		t.Errorf("diffPeers:\n%s\nwant:\n%s", got, want)
	}
	if d := diffPeers([]peerplan.Peer{h2}, []peerplan.Peer{h2}); len(d) != 0 {
		t.Errorf("diffPeers of equal lists: %q", d)
	}
}

// A change of the network's shared record carries no lease: apply takes
// nothing of it into the leases (no zero lease), and the watch's revision
// moves on (the leases are as of it).
func TestApplySharedEvent(t *testing.T) {
	t.Parallel()
	l := store.Lease{Subnet: netip.MustParsePrefix("10.244.2.0/24"), Host: "h2", VTEP: netip.MustParseAddr("192.168.77.12"), MAC: "02:00:00:00:00:02", Rev: 3}
	var ring store.Attrs
	ring, err := ring.With("esp.ring", store.Attr{Version: 1, Data: []byte(`{"epoch":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	a := &Agent{}
	a.apply(store.Event{Shared: &store.Shared{Attrs: ring, Rev: 2}, Rev: 2}) // before a snapshot: nothing
	if a.leases != nil || a.rev != 0 {
		t.Fatalf("a shared event before the snapshot: leases %v, rev %d", a.leases, a.rev)
	}
	a.apply(store.Event{Reset: true, Leases: []store.Lease{l}, Shared: &store.Shared{Attrs: ring, Rev: 2}, Rev: 4})
	a.apply(store.Event{Shared: &store.Shared{Attrs: ring.Without("esp.ring"), Rev: 5}, Rev: 5})
	if len(a.leases) != 1 || a.leases[l.Subnet] != l || len(a.acks) != 1 || a.rev != 5 {
		t.Fatalf("after a shared event: leases %v, acks %v, rev %d; want h2's lease alone, at revision 5", a.leases, a.acks, a.rev)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	ok := Config{
		Network:  store.Network{Name: "ov", CIDR: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 24, VNI: 1, Port: 4789},
		Node:     "h1",
		StateDir: "/run/berth/overlay",
		LeaseTTL: 30 * time.Second,
		Store:    struct{ store.Store }{},
	}
	if _, err := New(ok); err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(c *Config){
		"network":    func(c *Config) { c.Network.Name = "../x" },
		"cidr":       func(c *Config) { c.Network.CIDR = netip.Prefix{} },
		"subnet-len": func(c *Config) { c.Network.SubnetLen = 16 },
		"vni":        func(c *Config) { c.Network.VNI = 0 },
		"node":       func(c *Config) { c.Node = "" },
		"vtep":       func(c *Config) { c.VTEP = netip.MustParseAddr("fd00::1") },
		"mtu":        func(c *Config) { c.MTU = 100 },
		"state-dir":  func(c *Config) { c.StateDir = "" },
		"ttl":        func(c *Config) { c.LeaseTTL = time.Millisecond },
		"store":      func(c *Config) { c.Store = nil },
	} {
		c := ok
		edit(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s: New accepted %+v", name, c)
		}
	}
}
