// Package lab builds throwaway network labs for berth's end-to-end tests and
// its demo: named network namespaces (a "host", an "outside" standing in for
// the internet, containers), veth links between them, traffic probes that
// need no external binaries, and a CNI runner that executes the built plugins
// inside the lab's host namespace through libcni.
//
// It touches: network namespaces it creates with `ip netns add` (names carry
// a caller-chosen prefix and a random suffix) and everything inside them,
// files under directories the caller gives it, and processes it starts (each
// killed by PID on cleanup). It never changes the machine's own network
// namespace: every function that runs code or a program "in" a namespace
// refuses when the thread it would use is in the machine's namespace.
//
// The core has no dependency on package testing; testing.go adds a thin
// adapter for tests.
package lab

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// nsID identifies a network namespace by the device and inode of its nsfs
// file, the way `stat -L /proc/$pid/ns/net` does.
type nsID struct {
	dev, ino uint64
}

func (i nsID) String() string { return fmt.Sprintf("net:[%d]", i.ino) }

func statNS(path string) (nsID, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return nsID{}, fmt.Errorf("stat %s: %w", path, err)
	}
	return nsID{dev: st.Dev, ino: st.Ino}, nil
}

// machineNS holds the identities of the machine's own network namespace as
// seen at start-up: that of this process's main thread (captured in init,
// before any thread of ours moved) and that of PID 1 where readable (a VM's
// or container's init may hide it). A thread in either is never used to run
// a plugin, a command or a probe.
var machineNS []nsID

func init() {
	for _, p := range []string{"/proc/1/ns/net", "/proc/self/ns/net"} {
		if id, err := statNS(p); err == nil {
			machineNS = append(machineNS, id)
		}
	}
}

// ErrMachineNamespace is returned when an operation would run in the
// machine's own network namespace.
var ErrMachineNamespace = errors.New("refusing to run in the machine's own network namespace")

// threadNS returns the namespace of the calling OS thread. The caller must
// hold runtime.LockOSThread.
func threadNS() (nsID, error) {
	return statNS(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
}

// guardThread fails unless the calling (locked) OS thread is in the network
// namespace want and that namespace is not the machine's.
func guardThread(want nsID) error {
	got, err := threadNS()
	if err != nil {
		return err
	}
	if len(machineNS) == 0 {
		return fmt.Errorf("%w: cannot tell which namespace is the machine's (/proc/self/ns/net unreadable at start-up)", ErrMachineNamespace)
	}
	for _, m := range machineNS {
		if got == m {
			return fmt.Errorf("%w: thread is in %s", ErrMachineNamespace, got)
		}
	}
	if got != want {
		return fmt.Errorf("thread is in %s, want %s", got, want)
	}
	return nil
}

// RandomSuffix returns n random lower-case hex characters.
func RandomSuffix(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)[:n]
}

// IsRoot reports whether the process runs with uid 0.
func IsRoot() bool { return os.Geteuid() == 0 }

func randRead(b []byte) (int, error) { return rand.Read(b) }
