package agent

import (
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/esp"
)

// status is what the agent reports over HTTP. The agent's loop writes it;
// HTTP handlers read it.
type status struct {
	mu          sync.Mutex
	network     string
	vni         uint32
	subnet      netip.Prefix
	ready       bool
	reason      string
	peers       int
	syncs       uint64        // successful kernel syncs
	syncErrors  uint64        // failed kernel syncs
	storeErrors uint64        // failed store calls
	leaseLost   uint64        // times the lease was lost
	acks        uint64        // acknowledgements this host published
	ackPending  []string      // peers the running wait waits for
	ackLate     []string      // peers the last wait gave up on
	ackWait     time.Duration // how long the last wait took
	ackTimeouts uint64        // waits that gave up on a peer

	esp           bool // the network is encrypted
	espIn, espOut int  // SAs installed
	espEpoch      uint32
	espKeyCreated time.Time
	espRotations  uint64
	// espCounters reads the guard's drops and the kernel's xfrm error
	// counters when /metrics is asked for.
	espCounters func() (esp.Counters, map[string]uint64, error)
}

// snapshot is a copy of status without the lock.
type snapshot struct {
	Network     string
	VNI         uint32
	Subnet      netip.Prefix
	Ready       bool
	Reason      string
	Peers       int
	Syncs       uint64
	SyncErrors  uint64
	StoreErrors uint64
	LeaseLost   uint64
	Acks        uint64
	AckPending  []string
	AckLate     []string
	AckWait     time.Duration
	AckTimeouts uint64

	ESP           bool
	ESPIn, ESPOut int
	ESPEpoch      uint32
	ESPKeyCreated time.Time
	ESPRotations  uint64
	ESPCounters   func() (esp.Counters, map[string]uint64, error)
}

func (s *status) snapshot() snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return snapshot{
		Network: s.network, VNI: s.vni, Subnet: s.subnet, Ready: s.ready, Reason: s.reason, Peers: s.peers,
		Syncs: s.syncs, SyncErrors: s.syncErrors, StoreErrors: s.storeErrors, LeaseLost: s.leaseLost,
		Acks: s.acks, AckPending: slices.Clone(s.ackPending), AckLate: slices.Clone(s.ackLate),
		AckWait: s.ackWait, AckTimeouts: s.ackTimeouts,
		ESP: s.esp, ESPIn: s.espIn, ESPOut: s.espOut, ESPEpoch: s.espEpoch, ESPKeyCreated: s.espKeyCreated,
		ESPRotations: s.espRotations, ESPCounters: s.espCounters,
	}
}

func (s *status) update(fn func(s *status)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fn(s)
}

// handler serves /healthz and /metrics.
func (s *status) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		snap := s.snapshot()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !snap.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
			reason := snap.Reason
			if reason == "" {
				reason = "not ready"
			}
			fmt.Fprintln(w, reason)
			return
		}
		fmt.Fprintln(w, "ok")
		if len(snap.AckLate) > 0 {
			fmt.Fprintf(w, "peers that did not acknowledge this host's lease in time: %s\n", names(snap.AckLate))
		}
	})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		writeMetrics(w, s.snapshot())
	})
	return mux
}

// writeMetrics renders snap in the Prometheus text exposition format
// (version 0.0.4). Every series carries the network, so that the agents of
// several networks on one host can be told apart.
func writeMetrics(w io.Writer, snap snapshot) {
	net := `network="` + escapeLabel(snap.Network) + `"`
	metric := func(name, typ, help string, value any) {
		fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n%s{%s} %v\n", name, help, name, typ, name, net, value)
	}
	ready := 0
	if snap.Ready {
		ready = 1
	}
	metric("berth_overlay_ready", "gauge", "1 while the agent holds its lease and has programmed its peers, else 0.", ready)
	metric("berth_overlay_peers", "gauge", "Remote hosts programmed on the VXLAN device.", snap.Peers)
	metric("berth_overlay_syncs_total", "counter", "Successful syncs of the peers into the kernel.", snap.Syncs)
	metric("berth_overlay_sync_errors_total", "counter", "Syncs of the peers into the kernel that failed.", snap.SyncErrors)
	metric("berth_overlay_store_errors_total", "counter", "Failed calls to the cluster store.", snap.StoreErrors)
	metric("berth_overlay_lease_lost_total", "counter", "Times the subnet lease was lost and had to be acquired again.", snap.LeaseLost)
	metric("berth_overlay_acks_total", "counter", "Acknowledgements this host published for peers waiting for them.", snap.Acks)
	metric("berth_overlay_ack_pending", "gauge", "Peers the running wait for acknowledgements of this host's lease still waits for.", len(snap.AckPending))
	metric("berth_overlay_ack_wait_seconds", "gauge", "How long the last wait for the peers' acknowledgements of this host's lease took.", snap.AckWait.Seconds())
	metric("berth_overlay_ack_timeouts_total", "counter", "Waits for acknowledgements that gave up on a peer after the bound.", snap.AckTimeouts)
	metric("berth_overlay_ack_late_peers", "gauge", "Peers that did not acknowledge this host's lease within the bound, in the last wait.", len(snap.AckLate))
	fmt.Fprintf(w, "# HELP berth_overlay_ack_late Each of the first %d peers that did not acknowledge this host's lease within the bound, in the last wait.\n# TYPE berth_overlay_ack_late gauge\n", maxLateSeries)
	for _, p := range snap.AckLate[:min(len(snap.AckLate), maxLateSeries)] {
		fmt.Fprintf(w, "berth_overlay_ack_late{%s,peer=\"%s\"} 1\n", net, escapeLabel(p))
	}
	if snap.ESP {
		writeESPMetrics(w, net, snap, time.Now())
	}
	subnet := ""
	if snap.Subnet.IsValid() {
		subnet = snap.Subnet.String()
	}
	fmt.Fprintf(w, "# HELP berth_overlay_info The agent's network, leased subnet and VNI.\n# TYPE berth_overlay_info gauge\n")
	fmt.Fprintf(w, "berth_overlay_info{%s,subnet=\"%s\",vni=\"%d\"} 1\n", net, escapeLabel(subnet), snap.VNI)
}

// maxLateSeries bounds the berth_overlay_ack_late series: a cluster of
// agents that do not acknowledge (an older release everywhere) must not
// make one series per host.
const maxLateSeries = 100

// escapeLabel escapes a label value: backslash, double quote and newline.
func escapeLabel(s string) string {
	return strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s)
}

// writeESPMetrics renders the encrypted overlay's series.
func writeESPMetrics(w io.Writer, net string, snap snapshot, now time.Time) {
	fmt.Fprintf(w, "# HELP berth_overlay_esp_sas ESP security associations installed, by direction.\n# TYPE berth_overlay_esp_sas gauge\n")
	fmt.Fprintf(w, "berth_overlay_esp_sas{%s,dir=\"in\"} %d\nberth_overlay_esp_sas{%s,dir=\"out\"} %d\n", net, snap.ESPIn, net, snap.ESPOut)
	fmt.Fprintf(w, "# HELP berth_overlay_esp_key_epoch The newest key of the network's ring.\n# TYPE berth_overlay_esp_key_epoch gauge\nberth_overlay_esp_key_epoch{%s} %d\n", net, snap.ESPEpoch)
	age := 0.0
	if !snap.ESPKeyCreated.IsZero() {
		age = now.Sub(snap.ESPKeyCreated).Seconds()
	}
	fmt.Fprintf(w, "# HELP berth_overlay_esp_key_age_seconds Age of the ring's newest key.\n# TYPE berth_overlay_esp_key_age_seconds gauge\nberth_overlay_esp_key_age_seconds{%s} %.0f\n", net, age)
	fmt.Fprintf(w, "# HELP berth_overlay_esp_rotations_total Key ring changes this host stored (as the rotator).\n# TYPE berth_overlay_esp_rotations_total counter\nberth_overlay_esp_rotations_total{%s} %d\n", net, snap.ESPRotations)
	if snap.ESPCounters == nil {
		return
	}
	drops, xfrm, err := snap.ESPCounters()
	if err != nil {
		fmt.Fprintf(w, "# berth_overlay_esp counters: %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
	}
	fmt.Fprintf(w, "# HELP berth_overlay_esp_plaintext_dropped_total Packets of the network's VXLAN the guard dropped because they would have crossed in the clear.\n# TYPE berth_overlay_esp_plaintext_dropped_total counter\n")
	fmt.Fprintf(w, "berth_overlay_esp_plaintext_dropped_total{%s,dir=\"in\"} %d\nberth_overlay_esp_plaintext_dropped_total{%s,dir=\"out\"} %d\n", net, drops.In, net, drops.Out)
	fmt.Fprintf(w, "# HELP berth_overlay_xfrm_errors_total The kernel's xfrm error counters (/proc/net/xfrm_stat of the agent's namespace).\n# TYPE berth_overlay_xfrm_errors_total counter\n")
	for _, k := range slices.Sorted(maps.Keys(xfrm)) {
		fmt.Fprintf(w, "berth_overlay_xfrm_errors_total{%s,counter=\"%s\"} %d\n", net, escapeLabel(k), xfrm[k])
	}
}
