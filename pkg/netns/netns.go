// Package netns is how berth's kernel code names the network namespace it
// acts in. An NS is one namespace: its file and a netlink (NETLINK_ROUTE)
// socket opened there, with ways in for what that socket cannot do:
// nftables connections (NFT, Netfilter), and a thread switched into the
// namespace for sysctls, sockets and programs (Do). Every kernel effect in
// berth goes through an NS it was given; nothing relies on "the calling
// thread's namespace", so goroutines are safe by construction and a
// process (the overlay agent, a test) acts in exactly the namespace it
// names.
//
// It touches nothing by itself but the namespace files it opens.
package netns

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// ErrGone is wrapped by Open when the path names no namespace (any more).
var ErrGone = errors.New("network namespace is gone")

// ErrNotNetns is wrapped by Open when the path is not a network namespace.
var ErrNotNetns = errors.New("not a network namespace")

// ExitNoReturn is the exit status of a process whose thread could not
// switch back from a namespace Do entered (see Do).
const ExitNoReturn = 70

// origin is the namespace the process started in, opened before any
// goroutine could switch a thread: for a plugin, the host's. Threads the Go
// runtime makes later are cloned from its template thread, which never
// leaves it, so every thread not locked inside Do is in it.
var origin struct {
	file *os.File
	dev  uint64
	ino  uint64
	err  error
}

func init() {
	origin.file, origin.err = os.Open("/proc/thread-self/ns/net")
	if origin.err != nil {
		return
	}
	var st unix.Stat_t
	if origin.err = unix.Fstat(int(origin.file.Fd()), &st); origin.err == nil {
		origin.dev, origin.ino = st.Dev, st.Ino
	}
}

// NS is one network namespace. Its methods are safe for concurrent use;
// requests on its netlink socket are serialised.
type NS struct {
	path string   // for messages
	file *os.File // the namespace
	h    *netlink.Handle
	host bool // the process's own namespace (origin)

	rawOnce sync.Once
	raw     map[int]*nl.SocketHandle
	rawErr  error

	xfrmOnce sync.Once
	xfrm     *netlink.Handle
	xfrmErr  error
}

// Host opens the namespace the process started in: the host's, for a CNI
// plugin or an agent run in it.
func Host() (*NS, error) {
	if origin.err != nil {
		return nil, fmt.Errorf("open the process's network namespace: %w", origin.err)
	}
	fd, err := unix.FcntlInt(origin.file.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the process's network namespace: %w", err)
	}
	return open(os.NewFile(uintptr(fd), "host"), "the host namespace")
}

// Open opens the network namespace at path (/var/run/netns/NAME,
// /proc/PID/ns/net). A path that does not exist wraps ErrGone; a file that
// is not a network namespace wraps ErrNotNetns.
func Open(path string) (*NS, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("network namespace %s: %w", path, errors.Join(ErrGone, err))
		}
		return nil, fmt.Errorf("open network namespace %s: %w", path, err)
	}
	typ, err := unix.IoctlRetInt(int(f.Fd()), nsGetNSType)
	if err != nil || typ != unix.CLONE_NEWNET {
		f.Close()
		if err == nil {
			err = fmt.Errorf("namespace type %#x", typ)
		}
		return nil, fmt.Errorf("%s: %w: %w", path, ErrNotNetns, err)
	}
	return open(f, path)
}

// nsGetNSType is NS_GET_NSTYPE, _IO(0xb7, 0x3) (linux/nsfs.h): the
// namespace type of an nsfs file, CLONE_NEWNET for a network namespace.
const nsGetNSType = 0xb703

func open(f *os.File, path string) (*NS, error) {
	n := &NS{path: path, file: f}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat network namespace %s: %w", path, err)
	}
	n.host = origin.err == nil && st.Dev == origin.dev && st.Ino == origin.ino
	var err error
	if n.host {
		n.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	} else {
		n.h, err = netlink.NewHandleAt(vnetns.NsHandle(f.Fd()), unix.NETLINK_ROUTE)
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netlink socket in %s: %w", path, err)
	}
	return n, nil
}

// IsHost reports whether n is the namespace the process started in.
func (n *NS) IsHost() bool { return n.host }

// Path is the path n was opened from ("the host namespace" for Host).
func (n *NS) Path() string { return n.path }

// String names n for messages.
func (n *NS) String() string {
	if n.host && !strings.HasPrefix(n.path, "/") {
		return n.path
	}
	return "namespace " + n.path
}

// Fd is the namespace file's descriptor (IFLA_NET_NS_FD, setns). It stays
// valid until Close.
func (n *NS) Fd() int { return int(n.file.Fd()) }

// Netlink is n's NETLINK_ROUTE handle: links, addresses, routes,
// neighbours. Only those: the handle has no socket of another netlink
// family, and vishvananda/netlink runs a request of a family its handle
// lacks on a new socket in the calling thread's namespace, not n. XFRM
// goes through Xfrm, conntrack through NetlinkFamily
// (internal/deps checks that no code calls them on this handle).
func (n *NS) Netlink() *netlink.Handle { return n.h }

// Xfrm is n's NETLINK_XFRM handle (IPsec states and policies), opened on
// first use and closed by Close. A kernel without CONFIG_XFRM_USER fails
// it.
func (n *NS) Xfrm() (*netlink.Handle, error) {
	n.xfrmOnce.Do(func() {
		if n.host {
			n.xfrm, n.xfrmErr = netlink.NewHandle(unix.NETLINK_XFRM)
		} else {
			n.xfrm, n.xfrmErr = netlink.NewHandleAt(vnetns.NsHandle(n.file.Fd()), unix.NETLINK_XFRM)
		}
		if n.xfrmErr != nil {
			n.xfrmErr = fmt.Errorf("netlink xfrm socket in %s (CONFIG_XFRM_USER): %w", n, n.xfrmErr)
		}
	})
	return n.xfrm, n.xfrmErr
}

// Close closes the sockets and the namespace file.
func (n *NS) Close() error {
	n.h.Close()
	if n.xfrm != nil {
		n.xfrm.Close()
	}
	for _, s := range n.raw {
		s.Close()
	}
	return n.file.Close()
}

// Request is a netlink request built by hand (one the handle has no call
// for), of family proto (unix.NETLINK_ROUTE), to be run in n.
func (n *NS) Request(proto, msgType, flags int) (*nl.NetlinkRequest, error) {
	n.rawOnce.Do(func() {
		at := vnetns.NsHandle(n.file.Fd())
		if n.host {
			at = vnetns.None() // open it here, without a switch
		}
		s, err := nl.GetNetlinkSocketAt(at, vnetns.None(), unix.NETLINK_ROUTE)
		if err != nil {
			n.rawErr = fmt.Errorf("netlink socket in %s: %w", n, err)
			return
		}
		n.raw = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
	})
	if n.rawErr != nil {
		return nil, n.rawErr
	}
	if proto != unix.NETLINK_ROUTE {
		return nil, fmt.Errorf("netlink family %d: only NETLINK_ROUTE requests are built by hand", proto)
	}
	req := nl.NewNetlinkRequest(msgType, flags)
	req.Sockets = n.raw
	return req, nil
}

// NetlinkFamily opens a handle for the netlink family fam in n
// (unix.NETLINK_NETFILTER for conntrack); the caller closes it.
func (n *NS) NetlinkFamily(fam int) (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if n.host {
		h, err = netlink.NewHandle(fam)
	} else {
		h, err = netlink.NewHandleAt(vnetns.NsHandle(n.file.Fd()), fam)
	}
	if err != nil {
		return nil, fmt.Errorf("netlink family %d in %s: %w", fam, n, err)
	}
	return h, nil
}

// NFT opens a lasting nftables connection in n; the caller ends it with
// CloseLasting.
func (n *NS) NFT() (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if !n.host {
		opts = append(opts, nftables.WithNetNSFd(n.Fd()))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("nftables: open netlink in %s: %w", n, err)
	}
	return c, nil
}

// WithNFT runs fn with one lasting nftables connection in n.
func (n *NS) WithNFT(fn func(c *nftables.Conn) error) error {
	c, err := n.NFT()
	if err != nil {
		return err
	}
	err = fn(c)
	if cerr := c.CloseLasting(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("nftables: close netlink: %w", cerr))
	}
	return err
}

// Netfilter dials a NETLINK_NETFILTER socket in n, for requests
// google/nftables has no call for.
func (n *NS) Netfilter() (*mdnetlink.Conn, error) {
	cfg := &mdnetlink.Config{}
	if !n.host {
		cfg.NetNS = n.Fd()
	}
	c, err := mdnetlink.Dial(unix.NETLINK_NETFILTER, cfg)
	if err != nil {
		return nil, fmt.Errorf("nftables: open netlink in %s: %w", n, err)
	}
	return c, nil
}

// Do runs fn on the calling goroutine's own OS thread switched into n,
// then switches the thread back: for what needs a thread inside the
// namespace (sysctls under /proc/sys/net, sockets, /proc/thread-self/net,
// programs it starts). Unlike ns.Do it starts no goroutine, so it needs no
// new OS thread (a thread's creation costs about as much as the rest of
// the switch). The goroutine is locked to its thread meanwhile, so nothing
// else runs there; goroutines fn starts do not run in n, sockets fn opens
// stay in it.
//
// A thread that cannot switch back (also after a panic in fn) would leave
// the goroutine's later work in n with no way back: the process exits at
// once with status ExitNoReturn, running no deferred undo in the wrong
// namespace.
func (n *NS) Do(fn func() error) error {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open the thread's own network namespace: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(n.Fd(), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter %s: %w", n, err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			log.Printf("cannot return from %s: %v; exiting", n, err)
			os.Exit(ExitNoReturn)
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}

// ReadSysctl reads a file under /proc/sys/net of n, e.g.
// "ipv4/ip_forward", without its trailing newline.
//
// Equivalent: ip netns exec $n sysctl -n net.$key
func (n *NS) ReadSysctl(key string) (string, error) {
	var v string
	err := n.Do(func() error {
		b, err := os.ReadFile(sysctlPath(key))
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		return "", fmt.Errorf("read sysctl net.%s in %s: %w", dotted(key), n, err)
	}
	return v, nil
}

// WriteSysctl writes value to a file under /proc/sys/net of n. A missing
// file wraps fs.ErrNotExist (IPv6 disabled, an interface gone).
//
// Equivalent: ip netns exec $n sysctl -w net.$key=$value
func (n *NS) WriteSysctl(key, value string) error {
	err := n.Do(func() error { return os.WriteFile(sysctlPath(key), []byte(value), 0o644) })
	if err != nil {
		return fmt.Errorf("write sysctl net.%s=%s in %s: %w", dotted(key), value, n, err)
	}
	return nil
}

// EnsureSysctl is WriteSysctl when the value differs: a write that
// changes nothing still costs the kernel work (ip_forward's write walks
// every device).
func (n *NS) EnsureSysctl(key, value string) error {
	err := n.Do(func() error {
		p := sysctlPath(key)
		if b, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(b)) == value {
			return nil
		}
		return os.WriteFile(p, []byte(value), 0o644)
	})
	if err != nil {
		return fmt.Errorf("write sysctl net.%s=%s in %s: %w", dotted(key), value, n, err)
	}
	return nil
}

func sysctlPath(key string) string { return "/proc/sys/net/" + key }

func dotted(key string) string { return strings.ReplaceAll(key, "/", ".") }

// RetryDump runs dump until the kernel does not interrupt it (the table
// changed while it was read), at most dumpRetries times; the last
// interrupted result is an error wrapping netlink.ErrDumpInterrupted.
func RetryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries-1 {
			return v, err
		}
	}
}

// dumpRetries bounds RetryDump.
const dumpRetries = 5

// Run runs the program name (looked up in PATH) with args and stdin in n
// and returns its standard output. Its error names the command and carries
// its stderr, and its stdin when there was one.
//
// Equivalent: ip netns exec $n name args… < stdin
func (n *NS) Run(stdin, name string, args ...string) (string, error) {
	path, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found in PATH: %w", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// The child is forked from this thread, so it starts in n.
	if err := n.Do(cmd.Run); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if stdin != "" {
			msg += "; input:\n" + stdin
		}
		return "", fmt.Errorf("%s %s in %s: %w: %s", name, strings.Join(args, " "), n, err, msg)
	}
	return stdout.String(), nil
}
