package agent

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/overlay/esp"
	"github.com/berth-cni/berth/pkg/overlay/espplan"
	"github.com/berth-cni/berth/pkg/overlay/store"
)

func encrypted(every time.Duration) func(*Config) {
	return func(cfg *Config) {
		cfg.Network.Encryption, cfg.Network.KeyRotation = store.EncryptESP, every
		cfg.Resync = time.Second // the repair of a deleted SA within the test
	}
}

// On a kernel without ESP (this machine's), an agent of an encrypted
// network does not come up: it is not ready, and its reason, on /healthz
// and in the Local file the plugin reads, names what the kernel lacks; it
// made no VXLAN device, so nothing can leave in the clear.
func TestAgentEncryptNeedsESP(t *testing.T) {
	lab.RequireRoot(t)
	if lab.HasKernel(t, lab.KernelESP) {
		t.Skip("this kernel has ESP: TestAgentEncrypted covers it (the host, without ESP, runs this one)")
	}
	c := newCluster(t)
	r := c.start(1, encrypted(time.Hour))
	lab.WaitFor(t, 10*time.Second, "the reason names the kernel's lack", func() string {
		l, err := c.local(1)
		if err != nil {
			return err.Error()
		}
		if l.Ready || !strings.Contains(l.Reason, "CONFIG_INET_ESP") {
			return fmt.Sprintf("ready %v, reason %q", l.Ready, l.Reason)
		}
		return ""
	})
	code, body := r.get(t, "/healthz")
	if code != 503 || !strings.Contains(body, "CONFIG_INET_ESP") {
		t.Errorf("/healthz: %d %q; want 503 naming CONFIG_INET_ESP", code, body)
	}
	if _, err := c.deviceOf(1); err == nil {
		t.Error("the VXLAN device exists although the encryption could not come up")
	}
}

// underlayCount counts, on host i's port of the underlay, its ESP packets
// and its plain VXLAN packets, for as long as the test runs.
func (c *cluster) underlayCount(t *testing.T, i int) (espN, plain *atomic.Int64) {
	t.Helper()
	capt, err := c.u.NS.OpenCapture(fmt.Sprintf("ulp%d", i))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	espN, plain = new(atomic.Int64), new(atomic.Int64)
	done := make(chan struct{})
	go func() {
		defer close(done)
		capt.Each(ctx, func(f lab.Frame) bool {
			if f.Src == lab.HostAddr(i).Addr() {
				switch {
				case f.Proto == unix.IPPROTO_ESP:
					espN.Add(1)
				case f.Proto == unix.IPPROTO_UDP && f.DstPort == 4789:
					plain.Add(1)
				}
			}
			return true
		})
	}()
	t.Cleanup(func() { cancel(); <-done; capt.Close() })
	time.Sleep(50 * time.Millisecond)
	return espN, plain
}

// stream pings host j's device from host i every 10 ms until stop is
// called, which returns how many were sent and answered.
func (c *cluster) stream(t *testing.T, i, j int) (stop func() (sent, answered int)) {
	t.Helper()
	lj, err := c.local(j)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	type count struct{ s, a int }
	got := make(chan count, 1)
	go func() {
		s, a, err := c.host(i).PingStream(ctx, lj.Subnet.Addr(), 10*time.Millisecond)
		if err != nil {
			t.Error(err)
		}
		got <- count{s, a}
	}()
	return func() (int, int) { cancel(); n := <-got; return n.s, n.a }
}

func (r *agentRun) metricValue(t *testing.T, series string) float64 {
	t.Helper()
	_, body := r.get(t, "/metrics")
	v, err := strconv.ParseFloat(metric(body, series), 64)
	if err != nil {
		t.Fatalf("metric %s: %v in\n%s", series, err, body)
	}
	return v
}

// An encrypted cluster's life, in a kernel with ESP (the VM layer): the
// hosts reach each other and the underlay carries only ESP of it; a key
// rotation, an agent's restart and an SA deleted by hand lose no packet of
// a ping every 10 ms (the last: until the agent puts it back) and send
// nothing in the clear.
func TestAgentEncrypted(t *testing.T) {
	lab.RequireKernel(t, lab.KernelESP)
	c := newCluster(t)
	const every = 10 * time.Second
	a1, a2 := c.start(1, encrypted(every)), c.start(2, encrypted(every))
	l1, l2 := c.waitReady(1), c.waitReady(2)
	if l1.MTU != espplan.InnerMTU(1500) || l2.MTU != l1.MTU {
		t.Errorf("MTU %d and %d; want %d (the underlay's 1500 less VXLAN and ESP)", l1.MTU, l2.MTU, espplan.InnerMTU(1500))
	}
	esp1, plain1 := c.underlayCount(t, 1)
	c.ping(1, 2)
	c.ping(2, 1)
	if esp1.Load() == 0 || plain1.Load() != 0 {
		t.Fatalf("h1 on the underlay: %d ESP, %d plain VXLAN packets", esp1.Load(), plain1.Load())
	}
	if in, out := a1.metricValue(t, `berth_overlay_esp_sas{network="ov",dir="in"}`), a1.metricValue(t, `berth_overlay_esp_sas{network="ov",dir="out"}`); in < 1 || out != 1 {
		t.Errorf("h1's SAs: %v in, %v out", in, out)
	}
	epoch := a1.metricValue(t, `berth_overlay_esp_key_epoch{network="ov"}`)

	// A rotation.
	stop := c.stream(t, 1, 2)
	lab.WaitFor(t, 3*every, "a new key", func() string {
		if e := a2.metricValue(t, `berth_overlay_esp_key_epoch{network="ov"}`); e <= epoch {
			return fmt.Sprintf("epoch %v", e)
		}
		return ""
	})
	time.Sleep(time.Second) // the switch
	if s, a := stop(); s < 50 || a != s {
		t.Errorf("rotation: %d of %d echo requests lost", s-a, s)
	} else {
		t.Logf("rotation: %d echo requests, none lost", s)
	}

	// A restart of h2's agent (SIGTERM: the kernel state stays).
	stop = c.stream(t, 1, 2)
	if err := a2.stop(); err != nil {
		t.Fatal(err)
	}
	a2 = c.start(2, encrypted(every))
	c.waitReady(2)
	time.Sleep(500 * time.Millisecond)
	if s, a := stop(); s < 30 || a != s {
		t.Errorf("restart: %d of %d echo requests lost", s-a, s)
	} else {
		t.Logf("restart: %d echo requests, none lost", s)
	}

	// h1's transmit SA deleted by hand: blocked, then put back under a new
	// generation, which h2 follows.
	n1, err := netns.Open(c.host(1).Path)
	if err != nil {
		t.Fatal(err)
	}
	defer n1.Close()
	spec := esp.SpecFor(c.testConfigEnc(1, every).Network, lab.HostAddr(1).Addr())
	have, err := esp.ListSAs(n1, spec)
	if err != nil {
		t.Fatal(err)
	}
	var out []espplan.SA
	for _, s := range have {
		if s.Out {
			out = append(out, s)
		}
	}
	if _, err := esp.Apply(n1, spec, espplan.Changes{Delete: out}); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, 10*time.Second, "h1 reaches h2 again", func() string {
		if err := c.host(1).PingOnce(context.Background(), l2.Subnet.Addr(), 300*time.Millisecond); err != nil {
			return err.Error()
		}
		return ""
	})
	if n := plain1.Load(); n != 0 {
		t.Fatalf("%d plain VXLAN packets from h1", n)
	}
}

// testConfigEnc is testConfig with the encryption on.
func (c *cluster) testConfigEnc(i int, every time.Duration) Config {
	cfg := c.testConfig(i)
	encrypted(every)(&cfg)
	return cfg
}
