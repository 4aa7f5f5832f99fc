// Command overlay-scale measures the overlay agent's control plane
// (bench/README.md, issue 11): one real berth-overlayd in a lab host on an
// underlay, and simulated hosts whose leases the benchmark writes into the
// store through the store package, as their agents would. The agent's
// kernel is observed by netlink notifications in its namespace, never by
// polling.
//
//	-mode join:  -joins times, one simulated host's lease is acquired and the
//	             time is taken from Acquire's return to the moment the
//	             agent's kernel holds its route, neighbour and FDB entry
//	             (and, unless -keep, from Release's return to all three gone)
//	-mode scale: -hosts leases in the store, then the agent starts: time to
//	             all peers in its kernel, its RSS and CPU, the entries per
//	             peer; then -churn at -rate joins and leaves a second, with
//	             their propagation, the agent's CPU and (etcd) the range
//	             requests it sent
//
// Run as root after `make build`:
//
//	go run ./bench/overlay-scale -mode scale -hosts 1000
//	go run ./bench/overlay-scale -mode join -store file -joins 100
//
// It touches only namespaces it creates ("bscl-<pid>-…", removed with
// every process started in them on every exit path, Ctrl-C included), a
// temporary directory, and bench/out/overlay-scale-<time>-<pid>.{txt,log}.
package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/etcd"
	"github.com/berth-cni/berth/pkg/overlay/store/file"
)

// options are the flags.
type options struct {
	mode, store string
	bin         string
	joins       int
	keep        bool
	hosts       int
	churn       time.Duration
	rate        int
	simTTL      time.Duration // the simulated hosts' leases
	agentTTL    time.Duration // the agent's own lease
	wait        time.Duration // the limit of one propagation
	converge    time.Duration // the limit of the scale run's convergence
	workers     int
	etcdDir     string
}

func main() {
	var o options
	flag.StringVar(&o.mode, "mode", "scale", "join (propagation of single joins) or scale (many hosts, then churn)")
	flag.StringVar(&o.store, "store", "etcd", "store: etcd or file")
	flag.StringVar(&o.bin, "bin", "bin", "directory of the built berth-overlayd")
	flag.IntVar(&o.joins, "joins", 100, "join mode: simulated hosts joined one after another")
	flag.BoolVar(&o.keep, "keep", false, "join mode: keep each simulated lease (default: release it and time the leave)")
	flag.IntVar(&o.hosts, "hosts", 1000, "scale mode: simulated hosts in the store before the agent starts")
	flag.DurationVar(&o.churn, "churn", 60*time.Second, "scale mode: churn duration (0: none)")
	flag.IntVar(&o.rate, "rate", 10, "scale mode: joins and leaves per second during churn (each)")
	flag.DurationVar(&o.simTTL, "sim-ttl", 60*time.Second, "TTL of the simulated hosts' leases (kept alive by the store)")
	flag.DurationVar(&o.agentTTL, "lease-ttl", 10*time.Second, "the agent's -lease-ttl")
	flag.DurationVar(&o.wait, "wait", 10*time.Second, "limit of one propagation; later counts as missed")
	flag.DurationVar(&o.converge, "converge", 2*time.Minute, "scale mode: limit of the agent's convergence")
	flag.IntVar(&o.workers, "workers", 8, "scale mode: concurrent Acquires while writing the initial leases")
	flag.StringVar(&o.etcdDir, "etcd-dir", "", "etcd's data directory (default: in the run's temporary directory)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench/overlay-scale: %v\n", err)
		os.Exit(1)
	}
}

func (o options) validate() error {
	switch {
	case o.mode != "join" && o.mode != "scale":
		return fmt.Errorf("-mode %q: join or scale", o.mode)
	case o.store != "etcd" && o.store != "file":
		return fmt.Errorf("-store %q: etcd or file", o.store)
	case o.joins < 1 || o.joins > maxSims:
		return fmt.Errorf("-joins %d: between 1 and %d", o.joins, maxSims)
	case o.hosts < 1 || o.hosts+int(o.churn.Seconds()+1)*o.rate > maxSims:
		return fmt.Errorf("-hosts %d with -churn %v at -rate %d: at most %d simulated hosts in all", o.hosts, o.churn, o.rate, maxSims)
	case o.rate < 1 || o.churn < 0 || o.workers < 1:
		return fmt.Errorf("-rate %d, -workers %d: at least 1; -churn %v: not negative", o.rate, o.workers, o.churn)
	case o.simTTL < time.Second || o.agentTTL < time.Second:
		return fmt.Errorf("-sim-ttl %v, -lease-ttl %v: at least 1s", o.simTTL, o.agentTTL)
	}
	return nil
}

// bench is one run's lab: the agent's host, the store, the kernel watch.
type bench struct {
	o     options
	u     *lab.Underlay
	host  *lab.NS
	st    store.Store
	el    *etcdLab // nil on the file store
	w     *kernelWatch
	dir   string // temporary
	bin   string // berth-overlayd
	log   *lineLog
	flags []string // the agent's store flags
	rep   report
}

func run(ctx context.Context, o options) (err error) {
	if err = o.validate(); err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: it creates network namespaces")
	}
	bin, err := filepath.Abs(filepath.Join(o.bin, "berth-overlayd"))
	if err == nil {
		if _, err = os.Stat(bin); err != nil {
			err = fmt.Errorf("%w: run 'make build' first", err)
		}
	}
	root, rerr := lab.RepoRoot()
	if err = errors.Join(err, rerr); err != nil {
		return err
	}
	out := filepath.Join(root, "bench", "out", fmt.Sprintf("overlay-scale-%s-%d", time.Now().Format("20060102-150405"), os.Getpid()))
	_ = os.MkdirAll(filepath.Dir(out), 0o755) // if this failed, Create says why
	logf, err := os.Create(out + ".log")
	if err != nil {
		return err
	}
	defer logf.Close()
	tmp, err := os.MkdirTemp("", "bscl.")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	b := &bench{o: o, dir: tmp, bin: bin, log: newLineLog(logf)}
	if b.u, err = lab.NewUnderlay(ctx, "bscl"); err != nil {
		return err
	}
	// Deferred after RemoveAll, so it runs first: whatever still runs in
	// the lab's namespaces (etcd, the agent) dies before its directory goes.
	defer func() {
		if cerr := b.u.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
		if left, lerr := lab.ListNetns(fmt.Sprintf("bscl-%d-", os.Getpid())); lerr != nil || len(left) > 0 {
			err = errors.Join(err, fmt.Errorf("cleanup: namespaces left: %v %v", left, lerr))
		}
	}()
	progress("lab %s; the agent's log in %s.log", b.u.ID, out)
	if b.host, err = b.u.AddHost(ctx, 1); err != nil {
		return err
	}
	stop, err := b.openStore(ctx)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, stop()) }()
	if b.w, err = watchKernel(b.host); err != nil {
		return err
	}
	defer b.w.stop()
	etcdDir := ""
	if b.el != nil {
		etcdDir = b.etcdDir()
	}
	b.rep.machine = machine(ctx, etcdDir)
	if o.mode == "join" {
		err = b.joinMode(ctx)
	} else {
		err = b.scaleMode(ctx)
	}
	b.rep.machine += fmt.Sprintf(" → %s at the end", loadavg())
	fmt.Print(b.rep.String())
	if werr := os.WriteFile(out+".txt", []byte(b.rep.String()), 0o644); werr == nil {
		progress("written to %s.txt", out)
	} else {
		err = errors.Join(err, werr)
	}
	return err
}

func (b *bench) etcdDir() string {
	if b.o.etcdDir != "" {
		return b.o.etcdDir
	}
	return filepath.Join(b.dir, "etcd")
}

// openStore starts etcd (for -store etcd) and opens the bench's store,
// storing the network config; stop closes them.
func (b *bench) openStore(ctx context.Context) (stop func() error, err error) {
	if b.o.store == "file" {
		dir := filepath.Join(b.dir, "store")
		b.flags = []string{"-store", "file", "-store-dir", dir}
		b.st, err = file.New(dir)
		stop = func() error { return nil }
	} else {
		if err = os.MkdirAll(b.etcdDir(), 0o700); err != nil {
			return nil, err
		}
		if b.el, err = startEtcd(ctx, b.u, b.etcdDir()); err != nil {
			return nil, err
		}
		progress("etcd pid %d at %s (log %s)", b.el.etcd.PID(), b.el.agentEndpoint(), b.el.etcd.LogPath())
		b.flags = []string{"-store", "etcd", "-etcd-endpoints", b.el.agentEndpoint()}
		stop = b.el.stop
		b.st, err = etcd.New(etcd.Config{Endpoints: []string{b.el.endpoint()}})
	}
	if err != nil {
		return nil, errors.Join(err, stop())
	}
	closeStore := stop
	closeAll := func() error { return errors.Join(b.st.Close(), closeStore()) }
	if _, err = b.st.EnsureNetwork(ctx, network()); err != nil {
		return nil, errors.Join(err, closeAll())
	}
	return closeAll, nil
}

// startAgent starts berth-overlayd in the host; the caller stops it.
//
// Equivalent: ip netns exec $h1 berth-overlayd -network scale -state-dir $dir/state -cidr 10.0.0.0/8 … &
func (b *bench) startAgent() (*lab.Agent, time.Time, error) {
	args := append(agentArgs(), "-lease-ttl", b.o.agentTTL.String(), "-listen", agentListen)
	args = append(args, b.flags...)
	t0 := time.Now()
	b.log.start(t0)
	a, err := lab.StartAgent(b.host, b.bin, networkName, filepath.Join(b.dir, "state"), args, b.log)
	if err != nil {
		return nil, t0, err
	}
	progress("agent pid %d in %s", a.PID(), b.host.Name)
	return a, t0, nil
}

// stopAgent stops the agent with SIGTERM (SIGKILL after 10 s).
func stopAgent(a *lab.Agent) error {
	if err := a.Stop(syscall.SIGTERM); err != nil {
		return fmt.Errorf("stop the agent: %w", err)
	}
	return nil
}

// agentListen is the agent's /healthz and /metrics, in its host.
const agentListen = "127.0.0.1:9614"

// agentSyncs reads berth_overlay_syncs_total from the agent's /metrics.
func (b *bench) agentSyncs(ctx context.Context) (int, error) {
	body, err := httpGet(ctx, b.host, "http://"+agentListen+"/metrics")
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(body) {
		if strings.HasPrefix(line, "berth_overlay_syncs_total{") {
			f := strings.Fields(line)
			return strconv.Atoi(f[len(f)-1])
		}
	}
	return 0, errors.New("agent /metrics: no berth_overlay_syncs_total")
}

// lineLog writes the agent's output to the log file, each line prefixed
// with the time since the agent's start, and notes when it first said
// "ready".
type lineLog struct {
	mu    sync.Mutex
	w     io.Writer
	t0    time.Time
	buf   []byte
	ready time.Time
}

func newLineLog(w io.Writer) *lineLog { return &lineLog{w: w} }

func (l *lineLog) start(t0 time.Time) {
	l.mu.Lock()
	l.t0, l.ready = t0, time.Time{}
	l.mu.Unlock()
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := l.buf[:i+1]
		if l.ready.IsZero() && bytes.Contains(line, []byte(": ready: ")) {
			l.ready = now
		}
		fmt.Fprintf(l.w, "+%9.3fs %s", now.Sub(l.t0).Seconds(), line)
		l.buf = l.buf[i+1:]
	}
}

// readyAt is when the agent first logged "ready", zero if not yet.
func (l *lineLog) readyAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ready
}

// mark writes a line of the bench's own into the log.
func (l *lineLog) mark(format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	w := bufio.NewWriter(l.w)
	fmt.Fprintf(w, "+%9.3fs [bench] %s\n", time.Since(l.t0).Seconds(), fmt.Sprintf(format, a...))
	w.Flush()
}
