// Command overlay measures berth's overlay in one run (bench/README.md):
// iperf3 TCP throughput container → container across hosts against host →
// host on the underlay, and the time from a new host's agent start to its
// container's first ping reply from another host. Run as root after `make
// build`: go run ./bench/overlay [-bin bin] [-t 5s] [-runs 3]
//
// It touches only namespaces it creates ("bovb-<pid>-…", removed with their
// processes on every exit path, Ctrl-C included), a temporary directory,
// and bench/out/overlay-<time>-<pid>.{txt,log}.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/internal/lab"
)

// The overlay network of the lab, as in integration/overlay_test.go.
const (
	cidr      = "10.244.0.0/16"
	vni       = "4242"
	leaseTTL  = "3s"
	iperfPort = "5201"
	every     = 20 * time.Millisecond // ADD retries, ping attempts, polls
	joinLimit = 30 * time.Second
)

func main() {
	bin := flag.String("bin", "bin", "directory of the built plugins and berth-overlayd")
	dur := flag.Duration("t", 5*time.Second, "duration of each iperf3 run (whole seconds)")
	runs := flag.Int("runs", 3, "iperf3 runs per path, and hosts joined one after another")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, *bin, *dur, *runs)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/overlay: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, dur time.Duration, runs int) (err error) {
	if dur < time.Second || dur%time.Second != 0 || runs < 1 {
		return fmt.Errorf("-t wants whole seconds ≥ 1s (got %v), -runs ≥ 1 (got %d)", dur, runs)
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: it creates network namespaces")
	}
	if _, err = exec.LookPath("iperf3"); err != nil {
		return fmt.Errorf("iperf3 is missing (apt-get install iperf3): %w", err)
	}
	bin, err = filepath.Abs(bin)
	for _, b := range []string{"overlay", "portmap", "berth-overlayd"} {
		if _, serr := os.Stat(filepath.Join(bin, b)); err == nil && serr != nil {
			err = fmt.Errorf("%w: run 'make build' first", serr)
		}
	}
	root, rerr := lab.RepoRoot()
	if err = errors.Join(err, rerr); err != nil {
		return err
	}
	out := filepath.Join(root, "bench", "out", fmt.Sprintf("overlay-%s-%d", time.Now().Format("20060102-150405"), os.Getpid()))
	_ = os.MkdirAll(filepath.Dir(out), 0o755) // if this failed, Create says why
	logf, err := os.Create(out + ".log")
	if err != nil {
		return err
	}
	defer logf.Close()
	tmp, err := os.MkdirTemp("", "bovb.")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	u, err := lab.NewUnderlay(ctx, "bovb")
	if err != nil {
		return err
	}
	// Deferred after RemoveAll, so it runs first: the agents die before
	// their directories go.
	defer func() {
		if cerr := u.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	progress("lab %s; agents' and plugins' output in %s.log", u.ID, out)
	c := &cluster{u: u, dir: tmp, bin: bin, conflist: filepath.Join(root, "conflist", "overlay.conflist"), log: logf}
	rep, err := c.measure(ctx, dur, runs)
	if err != nil {
		return err
	}
	fmt.Print(rep)
	if err = os.WriteFile(out+".txt", []byte(rep.String()), 0o644); err == nil {
		progress("written to %s.txt", out)
	}
	return err
}

// measure brings up hosts 1 and 2 with a container each, measures the
// throughput between them, then joins hosts 3, 4, … one by one.
func (c *cluster) measure(ctx context.Context, dur time.Duration, runs int) (rep report, err error) {
	rep = report{dur: dur, machine: machine(ctx)}
	h1, _, err := c.join(ctx, 1, netip.Addr{})
	if err != nil {
		return rep, fmt.Errorf("host 1: %w", err)
	}
	h2, _, err := c.join(ctx, 2, h1.addr)
	if err != nil {
		return rep, fmt.Errorf("host 2: %w", err)
	}
	for k, ns := range []*lab.NS{h1.ns, h1.ct} { // the underlay's NIC, the overlay's
		if l, lerr := ns.NetlinkLink("eth0"); lerr == nil {
			rep.mtu[k] = l.Attrs().MTU
		}
	}
	paths := [2]path{
		{name: "overlay", client: h1.ct, server: h2.ct, dst: h2.addr},
		{name: "underlay", client: h1.ns, server: h2.ns, dst: lab.HostAddr(2).Addr()},
	}
	if rep.gbps, err = throughput(ctx, paths, dur, runs); err != nil {
		return rep, err
	}
	for i := 3; i < 3+runs; i++ {
		_, j, err := c.join(ctx, i, h1.addr)
		if err != nil {
			return rep, fmt.Errorf("join of host %d: %w", i, err)
		}
		progress("h%d: ready %.0f ms, first reply %.0f ms", i, ms(j.ready), ms(j.reply))
		rep.joins = append(rep.joins, j)
	}
	rep.machine += fmt.Sprintf(" → %s at the end", loadavg())
	return rep, nil
}

// cluster is the lab: hosts on one underlay, agents sharing a file store.
type cluster struct {
	u        *lab.Underlay
	dir      string // temporary: the store and each host's directories
	bin      string
	conflist string    // conflist/overlay.conflist
	log      io.Writer // agents' output and plugins' stderr
}

// host is one lab host and the one container the benchmark attaches there.
type host struct {
	ns, ct *lab.NS // the host's, its container's
	r      *lab.Runner
	conf   *lab.Conflist
	state  string
	att    lab.Attachment
	addr   netip.Addr // ct's, once added
}

// newHost creates host i, with its own directories, and its container's
// namespace; no agent yet.
func (c *cluster) newHost(ctx context.Context, i int) (*host, error) {
	ns, err := c.u.AddHost(ctx, i)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(c.dir, fmt.Sprintf("h%d", i))
	h := &host{ns: ns, state: filepath.Join(dir, "state")}
	h.r = lab.NewRunner(ns, []string{c.bin}, filepath.Join(dir, "cache"), c.log)
	h.conf, err = lab.LoadConflist(c.conflist, lab.ConflistOptions{
		Name: "ov-" + c.u.ID, DataDir: filepath.Join(dir, "data"), PortmapDir: filepath.Join(dir, "ports"),
		Edit: func(p map[string]any) {
			if p["type"] == "overlay" {
				p["stateDir"] = h.state
			}
		},
	})
	if err != nil {
		return nil, err
	}
	name := fmt.Sprintf("c%d", i)
	if h.ct, err = c.u.AddNS(ctx, name); err != nil {
		return nil, err
	}
	h.att = lab.Attachment{ContainerID: name + "-" + c.u.ID, NetNS: h.ct.Path, IfName: "eth0"}
	return h, nil
}

// joined is a host's join: agent start to first successful ADD (ready) and to first ping reply.
type joined struct {
	host, adds   int
	ready, reply time.Duration
}

// join creates host i, then, from t0, starts its agent, retries ADD every
// 20 ms while it answers "try again later" (11), and pings target (if
// valid) until the first reply. The agent is killed with its namespace.
//
// Equivalent: ip netns exec $h berth-overlayd -network ov-$id -store file … &
func (c *cluster) join(ctx context.Context, i int, target netip.Addr) (h *host, j joined, err error) {
	j.host = i
	if h, err = c.newHost(ctx, i); err != nil {
		return h, j, err
	}
	ctx, cancel := context.WithTimeout(ctx, joinLimit)
	defer cancel()
	args := []string{"-cidr", cidr, "-subnet-len", "24", "-vni", vni, "-node", fmt.Sprintf("h%d", i),
		"-lease-ttl", leaseTTL, "-listen", "127.0.0.1:9614", "-store", "file", "-store-dir", filepath.Join(c.dir, "store")}
	t0 := time.Now()
	if _, err = lab.StartAgent(h.ns, filepath.Join(c.bin, "berth-overlayd"), "ov-"+c.u.ID, h.state, args, c.log); err != nil {
		return h, j, err
	}
	var res types.Result
	for j.adds = 1; ; j.adds++ {
		res, err = h.r.Add(ctx, h.conf.List, h.att)
		if te := (*types.Error)(nil); err == nil || !errors.As(err, &te) || te.Code != types.ErrTryAgainLater || ctx.Err() != nil {
			break
		}
		time.Sleep(every)
	}
	if err != nil {
		return h, j, fmt.Errorf("ADD %d: %w", j.adds, err)
	}
	j.ready = time.Since(t0)
	addrs, err := lab.ResultAddrs(res)
	p, ok := lab.Pick(addrs, 4)
	if err != nil || !ok {
		return h, j, fmt.Errorf("ADD on h%d: no IPv4 address in %v (%v)", i, res, err)
	}
	h.addr = p.Addr()
	// One request per attempt, 20 ms to answer (lab.NS.Ping sends one per 200 ms).
	for target.IsValid() && h.ct.PingWithin(ctx, target, every) != nil {
		if ctx.Err() != nil {
			return h, j, fmt.Errorf("no ping reply from %s: %w", target, ctx.Err())
		}
	}
	j.reply = time.Since(t0)
	return h, j, nil
}

// path is one way across for iperf3: client namespace → dst in server's.
type path struct {
	name           string
	client, server *lab.NS
	dst            netip.Addr
}

// throughput starts an iperf3 server per path, then runs the clients runs
// times, alternating the paths, and returns Gbit/s per path and run.
func throughput(ctx context.Context, paths [2]path, dur time.Duration, runs int) ([2][]float64, error) {
	var got [2][]float64
	for _, p := range paths {
		stop, err := iperfServer(ctx, p.server, p.dst)
		if err != nil {
			return got, err
		}
		defer stop()
	}
	for r := range runs {
		for k, p := range paths {
			bps, err := iperfClient(ctx, p.client, p.dst, dur)
			if err != nil {
				return got, fmt.Errorf("%s run %d: %w", p.name, r+1, err)
			}
			progress("%s run %d: %.2f Gbit/s", p.name, r+1, bps/1e9)
			got[k] = append(got[k], bps/1e9)
		}
	}
	return got, nil
}

// iperfServer starts an iperf3 server on addr in ns, waits until it
// listens, and returns a func that stops it by its PID.
//
// Equivalent: ip netns exec $ns iperf3 -s -B $addr -p 5201 &
func iperfServer(ctx context.Context, ns *lab.NS, addr netip.Addr) (stop func(), err error) {
	cmd := exec.Command("iperf3", "-s", "-B", addr.String(), "-p", iperfPort)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err = ns.Start(cmd); err != nil {
		return nil, err
	}
	stop = func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		progress("stopped iperf3 server pid %d in %s", cmd.Process.Pid, ns.Name)
	}
	for start := time.Now(); ; time.Sleep(every) {
		// ss prints nothing until the socket listens.
		if o, err := ns.Output(ctx, "ss", "-Hltn", "sport", "=", ":"+iperfPort); err == nil && len(bytes.TrimSpace(o)) > 0 {
			return stop, nil
		}
		if ctx.Err() != nil || time.Since(start) > 5*time.Second {
			stop()
			return nil, fmt.Errorf("iperf3 server in %s not listening (%v): %s", ns.Name, ctx.Err(), strings.TrimSpace(out.String()))
		}
	}
}

// iperfClient runs one TCP iperf3 test from ns to dst and returns the bits
// per second the receiver counted (end.sum_received).
//
// Equivalent: ip netns exec $ns iperf3 -c $dst -p 5201 -t $secs -J
func iperfClient(ctx context.Context, ns *lab.NS, dst netip.Addr, d time.Duration) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	out, err := ns.Output(ctx, "iperf3", "-c", dst.String(), "-p", iperfPort, "-t", strconv.Itoa(int(d/time.Second)), "-J")
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if jerr := json.Unmarshal(out, &r); jerr == nil && r.Error != "" {
		err = errors.New(r.Error) // iperf3 -J prints its error in the JSON
	} else if err == nil && r.End.SumReceived.BitsPerSecond <= 0 {
		err = fmt.Errorf("no end.sum_received.bits_per_second in its JSON (%v)", jerr)
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 to %s: %w", dst, err)
	}
	return r.End.SumReceived.BitsPerSecond, nil
}

// report is what the run measured.
type report struct {
	dur     time.Duration
	gbps    [2][]float64 // overlay, underlay: per run
	joins   []joined
	mtu     [2]int // underlay, overlay
	machine string
}

func (r report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "throughput, Gbit/s: iperf3 TCP, %v per run, runs alternate overlay (container on h1 → container\n"+
		"on h2, VXLAN) and underlay (h1 eth0 → h2 eth0)\n%-8s %10s %10s\n", r.dur, "run", "overlay", "underlay")
	for i := range r.gbps[0] {
		fmt.Fprintf(&b, "%-8d %10.2f %10.2f\n", i+1, r.gbps[0][i], r.gbps[1][i])
	}
	mo, mu := median(r.gbps[0]), median(r.gbps[1])
	fmt.Fprintf(&b, "%-8s %10.2f %10.2f\noverlay/underlay: %.2f\n\n", "median", mo, mu, mo/mu)

	fmt.Fprintf(&b, "join: ms from a new host's agent start (t0) to the first ADD that succeeded (ready; ADD retried\n"+
		"every %v) and to the first ping reply from h1's container (a request per %v)\n%-8s %10s %10s %10s\n",
		every, every, "host", "ready", "reply", "ADDs")
	var ready, reply []float64
	for _, j := range r.joins {
		fmt.Fprintf(&b, "%-8s %10.0f %10.0f %10d\n", fmt.Sprintf("h%d", j.host), ms(j.ready), ms(j.reply), j.adds)
		ready, reply = append(ready, ms(j.ready)), append(reply, ms(j.reply))
	}
	fmt.Fprintf(&b, "%-8s %10.0f %10.0f\n", "median", median(ready), median(reply))
	fmt.Fprintf(&b, "  host k joins a cluster of k-1 hosts (earlier joiners stay); file store, lease TTL %s\n\n", leaseTTL)
	fmt.Fprintf(&b, "MTU: underlay %d (hosts' eth0), overlay %d (containers' eth0)\n%s\n", r.mtu[0], r.mtu[1], r.machine)
	return b.String()
}

// machine describes this machine: commit, iperf3, kernel, CPUs, load.
func machine(ctx context.Context) string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	ver, _ := exec.CommandContext(ctx, "iperf3", "--version").Output()
	commit, _ := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	first, _, _ := strings.Cut(string(ver), "\n")
	return fmt.Sprintf("commit %s, %s, kernel %s, %d CPUs, loadavg %s at the start",
		strings.TrimSpace(string(commit)), strings.TrimSpace(first), strings.TrimSpace(string(kernel)), runtime.NumCPU(), loadavg())
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// median of v; the mean of the middle two for an even count.
func median(v []float64) float64 {
	s := slices.Sorted(slices.Values(v))
	if len(s) == 0 {
		return 0
	}
	return (s[(len(s)-1)/2] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func progress(format string, a ...any) { fmt.Fprintf(os.Stderr, "# "+format+"\n", a...) }
