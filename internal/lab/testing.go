package lab

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequireRoot skips tb when not root, stating why, unless the environment
// variable CI is set: there a skipped root test is a failure, so that a
// green CI means the root tests ran.
func RequireRoot(tb testing.TB) {
	tb.Helper()
	if IsRoot() {
		return
	}
	const why = "needs root: creates network namespaces and runs CNI plugins in them"
	if os.Getenv("CI") != "" {
		tb.Fatal(why + " (CI is set, so a skip would hide the test)")
	}
	tb.Skip(why)
}

// StartTestEtcd starts etcd as opts say (see StartEtcd) and stops it in
// tb.Cleanup. An empty opts.Dir is a fresh tb.TempDir(); a given one is
// created if missing. Without an etcd binary tb is skipped, stating why,
// unless the environment variable CI is set: there it fails, as in
// RequireRoot.
//
// Without opts.DataDir the member's data goes on a tmpfs (/dev/shm) when
// there is one, removed in tb.Cleanup: etcd fsyncs every write, and under
// the whole suite's parallel load an fsync on the machine's disk stalled
// etcd for 9 s, longer than the 10 s lease TTL some tests run with minus
// a keep-alive period, so leases expired in tests about something else.
// Tests of a store outage make their own (they stop etcd or cut it off).
func StartTestEtcd(tb testing.TB, ctx context.Context, opts EtcdOptions) *Etcd {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	} else if err := os.MkdirAll(opts.Dir, 0o700); err != nil {
		tb.Fatal(err)
	}
	if opts.DataDir == "" {
		opts.DataDir = memDir(tb, "berth-etcd-")
	}
	e, err := StartEtcd(ctx, opts)
	if errors.Is(err, ErrEtcdMissing) {
		const why = "needs the etcd binary (Debian: apt-get install etcd-server)"
		if os.Getenv("CI") != "" {
			tb.Fatal(why + " (CI is set, so a skip would hide the test): " + err.Error())
		}
		tb.Skip(why)
	}
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := e.Stop(); err != nil {
			tb.Errorf("stop etcd: %v", err)
		}
	})
	return e
}

// NewTestWorld makes a World named "blab-…" and deletes it in tb.Cleanup.
func NewTestWorld(tb testing.TB) *World {
	tb.Helper()
	RequireRoot(tb)
	w, err := NewWorld(context.Background(), "blab")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := w.Close(); err != nil {
			tb.Errorf("lab cleanup: %v", err)
		}
		if left, err := w.Leftovers(); err != nil || len(left) > 0 {
			tb.Errorf("lab cleanup: namespaces left: %v (%v)", left, err)
		}
	})
	return w
}

// WaitFor polls cond every 50 ms until it returns "" (met) or the timeout
// passes, then fails tb with what and cond's last word.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() string) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := cond()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %v: %s", what, timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestLog is an io.Writer that logs each write through tb.Logf, after
// "Prefix: " when Prefix is set (the name of the host a process runs on,
// say).
type TestLog struct {
	TB     testing.TB
	Prefix string
}

func (l TestLog) Write(p []byte) (int, error) {
	l.TB.Helper()
	s := strings.TrimRight(string(p), "\n") // Logf adds one
	if l.Prefix != "" {
		s = l.Prefix + ": " + s
	}
	l.TB.Logf("%s", s)
	return len(p), nil
}

// memDir is a new directory on the tmpfs at /dev/shm, removed in
// tb.Cleanup, or "" when /dev/shm is not a tmpfs.
func memDir(tb testing.TB, prefix string) string {
	tb.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		return ""
	}
	dir, err := os.MkdirTemp("/dev/shm", prefix)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// RequireKernel skips tb unless this kernel has every feature in fs,
// probed once per process in a throwaway namespace (so it needs root, as
// RequireRoot). A test that calls it in its body runs in the VM layer too
// (make test-vm finds such tests by reading the sources), whose kernel has
// them all; there, where BERTH_VM=1, a missing feature fails the test
// rather than skipping it. A probe that cannot tell fails tb.
func RequireKernel(tb testing.TB, fs ...KernelFeature) {
	tb.Helper()
	RequireRoot(tb)
	for _, f := range fs {
		present, why, err := HasKernelFeature(context.Background(), f)
		if err != nil {
			tb.Fatal(err)
		}
		if present {
			continue
		}
		if InVM() {
			tb.Fatalf("needs %v, which this kernel lacks (%s): in the VM layer that is a failure; does the VM's init load its module?", f, why)
		}
		tb.Logf("kernel: %s", why)
		tb.Skipf("needs %v, which this kernel lacks: runs in the VM layer (make test-vm)", f)
	}
}

// HasKernel reports whether this kernel has f (probed as in RequireKernel;
// root only). It is for tests of how berth behaves where f is absent: they
// run where the kernel lacks f and assert the present case, or skip naming
// the test that covers it, where it has f.
func HasKernel(tb testing.TB, f KernelFeature) bool {
	tb.Helper()
	RequireRoot(tb)
	present, _, err := HasKernelFeature(context.Background(), f)
	if err != nil {
		tb.Fatal(err)
	}
	return present
}
