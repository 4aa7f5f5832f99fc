// Package vxlan programs one host's side of the overlay: the VXLAN device
// of a network and, for every remote host, the route, permanent neighbour
// and FDB entry that reach it (flannel's vxlan model: O(hosts) kernel
// state, no learning, no multicast).
//
// It touches, with netlink in the network namespace it is given (an NS),
// that namespace's links, addresses, main-table routes, neighbours and
// VXLAN FDB entries, and its /proc/sys/net/ipv4/ip_forward. What to program
// is computed by pure code over plain values: package peerplan (the peers,
// the entries they need, the sync plan) and DeviceName here; this package
// reads the kernel into those values and applies the plans.
package vxlan

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is one network namespace this package works in: a netlink socket
// opened there and the namespace's file, for the few effects that need a
// thread inside it (sysctls, sockets). Every kernel effect goes through an
// NS, never through the calling thread's namespace, so that goroutines of
// a caller running in another namespace cannot touch the wrong one.
type NS struct {
	path string // for messages; "" for the opener's own namespace
	fd   netns.NsHandle
	h    *netlink.Handle
}

// OpenNS opens the network namespace at path (/var/run/netns/NAME,
// /proc/PID/ns/net); path "" is the namespace of the calling thread, what
// a process that runs in its host's namespace wants. Close it when done.
func OpenNS(path string) (*NS, error) {
	var fd netns.NsHandle
	var err error
	if path == "" {
		fd, err = netns.Get()
	} else {
		fd, err = netns.GetFromPath(path)
	}
	if err != nil {
		return nil, fmt.Errorf("open network namespace %s: %w", nsName(path), err)
	}
	h, err := netlink.NewHandleAt(fd, unix.NETLINK_ROUTE)
	if err != nil {
		fd.Close()
		return nil, fmt.Errorf("netlink socket in %s: %w", nsName(path), err)
	}
	return &NS{path: path, fd: fd, h: h}, nil
}

func nsName(path string) string {
	if path == "" {
		return "the calling thread's namespace"
	}
	return path
}

// String names the namespace for messages.
func (n *NS) String() string { return nsName(n.path) }

// Close closes the netlink socket and the namespace file.
func (n *NS) Close() error {
	n.h.Close()
	return n.fd.Close()
}

// Do runs fn on a fresh OS thread moved into the namespace, after checking
// the thread arrived there. Sockets fn opens stay in the namespace;
// goroutines fn starts do not run in it. The thread is never unlocked, so
// the runtime ends it with the goroutine instead of reusing a thread in a
// foreign namespace.
func (n *NS) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with this goroutine
		if err := netns.Set(n.fd); err != nil {
			errc <- fmt.Errorf("enter %s: %w", n, err)
			return
		}
		var want, got unix.Stat_t
		if err := unix.Fstat(int(n.fd), &want); err != nil {
			errc <- fmt.Errorf("stat %s: %w", n, err)
			return
		}
		if err := unix.Stat("/proc/thread-self/ns/net", &got); err != nil {
			errc <- fmt.Errorf("stat thread namespace: %w", err)
			return
		}
		if got.Dev != want.Dev || got.Ino != want.Ino {
			errc <- fmt.Errorf("enter %s: thread is in net:[%d], want net:[%d]", n, got.Ino, want.Ino)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// EnableForwarding turns IPv4 forwarding on in the namespace, so traffic
// between the VXLAN device and the containers' bridge is routed. It writes
// only when the value differs.
//
// Equivalent: sysctl -w net.ipv4.ip_forward=1
func (n *NS) EnableForwarding() error {
	const path = "/proc/sys/net/ipv4/ip_forward"
	return n.Do(func() error {
		b, err := os.ReadFile(path)
		if err == nil && len(b) > 0 && b[0] == '1' {
			return nil
		}
		if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
			return fmt.Errorf("enable ipv4 forwarding in %s: %w", n, err)
		}
		return nil
	})
}

// dumpRetries bounds the retries of a netlink dump the kernel interrupted
// (the table changed while it was read).
const dumpRetries = 5

// retryDump runs dump until it is not interrupted, at most dumpRetries
// times; the last interrupted result is an error.
func retryDump[T any](dump func() ([]T, error)) ([]T, error) {
	for i := 0; ; i++ {
		v, err := dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) || i == dumpRetries-1 {
			return v, err
		}
	}
}

// isNotFound reports a netlink "no such object" answer: ENOENT, ESRCH
// (routes), ENODEV, or netlink's own LinkNotFoundError.
func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV)
}
