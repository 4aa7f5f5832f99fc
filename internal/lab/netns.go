package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsDir is where `ip netns` keeps its bind-mounted namespace files.
const NetnsDir = "/var/run/netns"

// NS is a named network namespace created by this package.
type NS struct {
	Name string // name in `ip netns list`
	Path string // /var/run/netns/Name, what CNI_NETNS points at

	id nsID

	mu      sync.Mutex
	procs   []*os.Process // started in this namespace, killed by PID on Delete
	deleted bool
}

// NewNS creates the network namespace name and brings its lo up.
//
// Equivalent: ip netns add $name && ip -n $name link set lo up
func NewNS(ctx context.Context, name string) (*NS, error) {
	if name == "" || name != filepath.Base(name) || strings.HasPrefix(name, ".") {
		return nil, fmt.Errorf("netns name %q is not a plain file name", name)
	}
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("ip netns add %s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	n := &NS{Name: name, Path: filepath.Join(NetnsDir, name)}
	id, err := statNS(n.Path)
	if err == nil {
		for _, m := range machineNS {
			if id == m {
				err = fmt.Errorf("%w: %s is the machine's namespace", ErrMachineNamespace, n.Path)
			}
		}
	}
	if err != nil {
		return nil, errors.Join(err, n.Delete())
	}
	n.id = id
	if err := n.LinkUp("lo"); err != nil {
		return nil, errors.Join(err, n.Delete())
	}
	return n, nil
}

// String returns the namespace name.
func (n *NS) String() string { return n.Name }

// Delete kills the processes started in the namespace (by PID) and removes
// it. Deleting twice is not an error.
//
// Equivalent: kill -9 $pids; ip netns del $name
func (n *NS) Delete() error {
	n.mu.Lock()
	procs := n.procs
	n.procs = nil
	n.deleted = true
	n.mu.Unlock()
	var errs []error
	for _, p := range procs {
		if err := p.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
			errs = append(errs, fmt.Errorf("kill pid %d in %s: %w", p.Pid, n.Name, err))
		}
	}
	if _, err := os.Stat(n.Path); errors.Is(err, os.ErrNotExist) {
		return errors.Join(errs...)
	}
	if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
		errs = append(errs, fmt.Errorf("ip netns del %s: %w: %s", n.Name, err, strings.TrimSpace(string(out))))
	}
	return errors.Join(errs...)
}

// Do runs fn on an OS thread that is in this namespace. Sockets fn opens
// stay in the namespace after it returns; goroutines fn starts do not run in
// it. The thread is never unlocked, so the runtime ends it when fn returns
// rather than reusing a thread in a foreign namespace.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: this thread dies with the goroutine
		defer func() {
			if r := recover(); r != nil {
				errc <- fmt.Errorf("panic in netns %s: %v", n.Name, r)
			}
		}()
		if err := n.enter(); err != nil {
			errc <- err
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// enter moves the calling, locked thread into the namespace and checks that
// it arrived there.
func (n *NS) enter() error {
	h, err := netns.GetFromPath(n.Path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", n.Path, err)
	}
	defer h.Close()
	if err := netns.Set(h); err != nil {
		return fmt.Errorf("setns %s: %w", n.Path, err)
	}
	return guardThread(n.id)
}

// Handle returns a netlink handle whose socket lives in this namespace.
// Close it when done.
func (n *NS) Handle() (*netlink.Handle, error) {
	var h *netlink.Handle
	err := n.Do(func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", n.Name, err)
	}
	return h, nil
}

// withHandle runs fn with a netlink handle in this namespace.
func (n *NS) withHandle(fn func(h *netlink.Handle) error) error {
	h, err := n.Handle()
	if err != nil {
		return err
	}
	defer h.Close()
	return fn(h)
}

// Start starts cmd with its process in this namespace (forked from a thread
// in it, so the child inherits the namespace). The process is killed by PID
// on Delete if still running. The caller waits for it.
func (n *NS) Start(cmd *exec.Cmd) error {
	n.mu.Lock()
	deleted := n.deleted
	n.mu.Unlock()
	if deleted {
		return fmt.Errorf("netns %s is deleted", n.Name)
	}
	err := n.Do(func() error {
		// Re-checked here, on the thread that forks: the child inherits
		// exactly this thread's namespace.
		if err := guardThread(n.id); err != nil {
			return err
		}
		return cmd.Start()
	})
	if err != nil {
		return fmt.Errorf("start %s in %s: %w", cmd.Path, n.Name, err)
	}
	n.mu.Lock()
	n.procs = append(n.procs, cmd.Process)
	n.mu.Unlock()
	return nil
}

// Run runs cmd in this namespace and waits for it.
func (n *NS) Run(cmd *exec.Cmd) error {
	if err := n.Start(cmd); err != nil {
		return err
	}
	err := cmd.Wait()
	n.forget(cmd.Process)
	return err
}

// Output runs name with args in this namespace and returns its stdout; on
// failure the error carries stderr.
//
// Equivalent: ip netns exec $ns $name $args...
func (n *NS) Output(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	var stdout strings.Builder
	cmd.Stdout = &stdout
	cmd.WaitDelay = 5 * time.Second
	if err := n.Run(cmd); err != nil {
		return []byte(stdout.String()), fmt.Errorf("%s %s (in %s): %w: %s", name, strings.Join(args, " "), n.Name, err, strings.TrimSpace(stderr.String()))
	}
	return []byte(stdout.String()), nil
}

func (n *NS) forget(p *os.Process) {
	n.mu.Lock()
	defer n.mu.Unlock()
	for i, q := range n.procs {
		if q == p {
			n.procs = append(n.procs[:i], n.procs[i+1:]...)
			return
		}
	}
}

// WriteSysctl writes value to /proc/sys/<key> (key in dotted or slashed
// form; in slashed form, as with sysctl(8), dots stay dots, so that
// "net/ipv6/conf/eth0.101/accept_dad" names a VLAN sub-interface) from a
// thread in this namespace: /proc/sys/net is per namespace of the thread
// that opens it.
//
// Equivalent: ip netns exec $ns sysctl -w $key=$value
func (n *NS) WriteSysctl(key, value string) error {
	path := sysctlPath(key)
	if !strings.HasPrefix(path, "/proc/sys/net/") {
		return fmt.Errorf("sysctl %s is not per network namespace", key)
	}
	return n.Do(func() error {
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("write %s in %s: %w", path, n.Name, err)
		}
		return nil
	})
}

// ReadSysctl reads /proc/sys/<key> from a thread in this namespace.
func (n *NS) ReadSysctl(key string) (string, error) {
	path := sysctlPath(key)
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile(path)
		v = strings.TrimSpace(string(b))
		return err
	})
	return v, err
}

// sysctlPath is the /proc/sys file of a key in dotted or slashed form.
func sysctlPath(key string) string {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	return filepath.Join("/proc/sys", key)
}

// EnableForwarding turns on IPv4 and IPv6 forwarding in this namespace.
//
// Equivalent: ip netns exec $ns sysctl -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
func (n *NS) EnableForwarding() error {
	return errors.Join(
		n.WriteSysctl("net/ipv4/ip_forward", "1"),
		n.WriteSysctl("net/ipv6/conf/all/forwarding", "1"),
	)
}

// Exists reports whether the namespace file is still there.
func (n *NS) Exists() bool {
	_, err := os.Stat(n.Path)
	return err == nil
}

// ListNetns returns the names under /var/run/netns that start with prefix.
func ListNetns(prefix string) ([]string, error) {
	ents, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			names = append(names, e.Name())
		}
	}
	return names, nil
}

// PrivateMountCommand returns a command running name with args in a
// private mount namespace where each binds[i][0] (a directory) is
// bind-mounted over binds[i][1], so a program with a fixed state path
// (cnitool's /var/lib/cni cache) writes into a directory of the caller's
// instead. The mounts vanish with the process. Start it with NS.Run to also
// put it in a network namespace.
//
// Equivalent: unshare -m sh -c 'mount --bind $src $dst; exec $name $args'
func PrivateMountCommand(ctx context.Context, binds [][2]string, name string, args ...string) *exec.Cmd {
	const script = `set -e
while [ "$1" != "--" ]; do mount --bind "$1" "$2"; shift 2; done
shift
exec "$@"`
	argv := []string{"-c", script, "sh"}
	for _, b := range binds {
		argv = append(argv, b[0], b[1])
	}
	argv = append(argv, "--", name)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, "/bin/sh", argv...)
	// Go makes "/" recursively private in the child before exec when it
	// unshares the mount namespace, so no mount propagates back.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// Dial opens a connection from inside the namespace (the socket stays in
// it): an http.Transport's DialContext for a server on the namespace's
// loopback, as HTTPGet uses.
func (n *NS) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var d net.Dialer
		var err error
		conn, err = d.DialContext(ctx, network, addr)
		return err
	})
	return conn, err
}

// HTTPGet fetches url dialling from inside the namespace, one request and
// no retry, and returns the status and up to 1 MiB of the body.
//
// Equivalent: ip netns exec $ns curl -s $url
func (n *NS) HTTPGet(ctx context.Context, url string) (int, string, error) {
	tr := &http.Transport{DialContext: n.Dial, DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", fmt.Errorf("GET %s in netns %s: %w", url, n.Name, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return resp.StatusCode, "", fmt.Errorf("GET %s in netns %s: reading the body: %w", url, n.Name, err)
	}
	return resp.StatusCode, string(b), nil
}
