package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// ErrEtcdMissing is returned (wrapped) by StartEtcd when there is no etcd
// binary (Debian: apt-get install etcd-server).
var ErrEtcdMissing = errors.New("etcd binary not found")

// EtcdOptions says how StartEtcd runs a one-member etcd cluster.
type EtcdOptions struct {
	// Dir holds the member's data (Dir/data) and its log (Dir/etcd.log,
	// appended to across restarts). Required.
	Dir string
	// ClientURL and PeerURL are http://addr:port URLs to listen on and
	// advertise (ClientURL https:// with CertFile). Empty: 127.0.0.1 with
	// a port free at start-up (in NetNS when set).
	ClientURL, PeerURL string
	// CertFile and KeyFile (PEM) make etcd serve its clients over TLS
	// (--cert-file, --key-file); the peer URL stays plain http (one
	// member). ClientCAFile with ClientCertAuth makes it require a client
	// certificate signed by that CA (--trusted-ca-file,
	// --client-cert-auth). ProbeTLS is what the lab's own /health probe
	// dials with: the CA to verify etcd, and a client certificate when
	// etcd requires one.
	CertFile, KeyFile string
	ClientCAFile      string
	ClientCertAuth    bool
	ProbeTLS          *tls.Config
	// NetNS runs etcd inside this lab namespace (give URLs on one of its
	// addresses for other namespaces to reach it). Nil: etcd runs in the
	// test's own namespace, where it only listens on 127.0.0.1.
	NetNS *NS
	// Binary is the etcd program; "etcd" from PATH when empty.
	Binary string
	// DataDir holds the member's data instead of Dir/data when set
	// (StartTestEtcd puts it on a tmpfs: see there).
	DataDir string
}

// Etcd is a running (or stopped) one-member etcd started by StartEtcd.
type Etcd struct {
	opts EtcdOptions // filled in

	mu     sync.Mutex
	cmd    *exec.Cmd     // nil while stopped
	exited chan struct{} // closed when cmd's process has been waited for
}

// StartEtcd starts etcd as opts say and waits until it answers /health.
// Stop it when done: the process is not tied to the caller's lifetime.
//
// Equivalent: etcd --data-dir $dir/data --listen-client-urls $c --advertise-client-urls $c \
// --listen-peer-urls $p --initial-advertise-peer-urls $p --initial-cluster lab=$p \
// [--cert-file $cert --key-file $key [--trusted-ca-file $ca] [--client-cert-auth]] &
func StartEtcd(ctx context.Context, opts EtcdOptions) (*Etcd, error) {
	if opts.Dir == "" {
		return nil, errors.New("start etcd: a directory is required")
	}
	if opts.Binary == "" {
		opts.Binary = "etcd"
	}
	bin, err := exec.LookPath(opts.Binary)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w: %w", ErrEtcdMissing, err)
	}
	opts.Binary = bin
	if (opts.CertFile == "") != (opts.KeyFile == "") || opts.ClientCertAuth && opts.ClientCAFile == "" {
		return nil, errors.New("start etcd: CertFile and KeyFile go together, and ClientCertAuth needs ClientCAFile")
	}
	for _, u := range []*string{&opts.ClientURL, &opts.PeerURL} {
		if *u != "" {
			continue
		}
		port, err := freePort(opts.NetNS)
		if err != nil {
			return nil, fmt.Errorf("start etcd: %w", err)
		}
		scheme := "http"
		if u == &opts.ClientURL && opts.CertFile != "" {
			scheme = "https"
		}
		*u = fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
	}
	e := &Etcd{opts: opts}
	if err := e.start(ctx); err != nil {
		return nil, err
	}
	return e, nil
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago (in
// ns when set).
func freePort(ns *NS) (int, error) {
	var port int
	listen := func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return fmt.Errorf("find a free port: %w", err)
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	}
	if ns == nil {
		return port, listen()
	}
	return port, ns.Do(listen)
}

// Endpoint is the client URL, for clientv3.Config.Endpoints.
func (e *Etcd) Endpoint() string { return e.opts.ClientURL }

// LogPath is the file etcd logs to.
func (e *Etcd) LogPath() string { return filepath.Join(e.opts.Dir, "etcd.log") }

// PID returns the process ID, 0 while stopped.
func (e *Etcd) PID() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd == nil {
		return 0
	}
	return e.cmd.Process.Pid
}

func (e *Etcd) start(ctx context.Context) error {
	exited, err := e.spawn()
	if err != nil {
		return err
	}
	if err := e.waitHealthy(ctx, exited); err != nil {
		return fmt.Errorf("start etcd (log %s): %w", e.LogPath(), errors.Join(err, e.Stop(), e.logTail()))
	}
	return nil
}

// dataDir is where the member keeps its data.
func (o EtcdOptions) dataDir() string {
	if o.DataDir != "" {
		return o.DataDir
	}
	return filepath.Join(o.Dir, "data")
}

// args are etcd's command line.
func (o EtcdOptions) args() []string {
	args := []string{
		"--name", "lab",
		"--data-dir", o.dataDir(),
		"--listen-client-urls", o.ClientURL,
		"--advertise-client-urls", o.ClientURL,
		"--listen-peer-urls", o.PeerURL,
		"--initial-advertise-peer-urls", o.PeerURL,
		"--initial-cluster", "lab=" + o.PeerURL,
		"--initial-cluster-state", "new", // ignored when data/ exists: a restart rejoins
		"--logger", "zap",
		"--log-outputs", "stderr",
	}
	if o.CertFile != "" {
		args = append(args, "--cert-file", o.CertFile, "--key-file", o.KeyFile)
	}
	if o.ClientCAFile != "" {
		args = append(args, "--trusted-ca-file", o.ClientCAFile)
	}
	if o.ClientCertAuth {
		args = append(args, "--client-cert-auth")
	}
	return args
}

// spawn starts the etcd process.
func (e *Etcd) spawn() (exited <-chan struct{}, err error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil {
		return nil, fmt.Errorf("start etcd: already running as pid %d", e.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(e.LogPath(), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	defer logf.Close() // the child has its own copy
	o := e.opts
	cmd := exec.Command(o.Binary, o.args()...)
	cmd.Env = withoutEtcdEnv(os.Environ())
	cmd.Stdout, cmd.Stderr = logf, logf
	if o.NetNS != nil {
		err = o.NetNS.Start(cmd)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("start etcd: %w", err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait() // the exit status of a process we signalled says nothing
		if o.NetNS != nil {
			o.NetNS.forget(cmd.Process)
		}
		close(done)
	}()
	e.cmd, e.exited = cmd, done
	return done, nil
}

// withoutEtcdEnv drops ETCD_* variables, which etcd reads as flags.
func withoutEtcdEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		if !strings.HasPrefix(kv, "ETCD_") {
			out = append(out, kv)
		}
	}
	return out
}

// waitHealthy polls GET /health until etcd says it is healthy, ctx ends or
// the process exits.
//
// Equivalent: until curl -fs $client/health | grep -q '"health":"true"'; do sleep 0.1; done
func (e *Etcd) waitHealthy(ctx context.Context, exited <-chan struct{}) error {
	tr := &http.Transport{DisableKeepAlives: true, TLSClientConfig: e.opts.ProbeTLS}
	if ns := e.opts.NetNS; ns != nil {
		tr.DialContext = ns.Dial
	}
	client := &http.Client{Transport: tr, Timeout: 2 * time.Second}
	defer tr.CloseIdleConnections()
	health, err := url.JoinPath(e.opts.ClientURL, "health")
	if err != nil {
		return err
	}
	var last error
	for {
		last = probeHealth(ctx, client, health)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("etcd not healthy at %s: %w (last: %w)", health, ctx.Err(), last)
		case <-exited:
			return fmt.Errorf("etcd exited before it was healthy (last probe: %w)", last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func probeHealth(ctx context.Context, client *http.Client, health string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, health, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `"health":"true"`) {
		return fmt.Errorf("GET %s: %s: %s", health, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// logTail returns the end of the log as an error, for a failed start.
func (e *Etcd) logTail() error {
	b, err := os.ReadFile(e.LogPath())
	if err != nil {
		return err
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return fmt.Errorf("etcd log tail:\n%s", b)
}

// Stop stops etcd: SIGTERM, then SIGKILL after 10 s. The data stays for
// Restart. Stopping a stopped Etcd is not an error.
//
// Equivalent: kill $pid; sleep 10; kill -9 $pid
func (e *Etcd) Stop() error {
	e.mu.Lock()
	cmd, exited := e.cmd, e.exited
	e.cmd, e.exited = nil, nil
	e.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stop etcd pid %d: %w", cmd.Process.Pid, err)
	}
	select {
	case <-exited:
		return nil
	case <-time.After(10 * time.Second):
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill etcd pid %d: %w", cmd.Process.Pid, err)
	}
	<-exited
	return nil
}

// Restart stops etcd and starts it again on the same data and URLs, and
// waits until it answers.
func (e *Etcd) Restart(ctx context.Context) error {
	if err := e.Stop(); err != nil {
		return err
	}
	return e.start(ctx)
}
