package nat

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"

	bnetns "github.com/berth-cni/berth/pkg/netns"
)

// needRoot skips a test that needs root, with the reason; under CI, which
// runs as root, such a skip would hide a failure, so it fails instead.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "needs root to create network namespaces")
	}
}

func skipOrFail(t *testing.T, reason string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set and this test cannot run: %s", reason)
	}
	t.Skip(reason)
}

// needCommand skips (or under CI fails) when name is not on PATH.
func needCommand(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		skipOrFail(t, fmt.Sprintf("%s is not installed (apt-get install iptables): %v", name, err))
	}
}

// testNS is a network namespace made for one test and removed after it.
type testNS struct {
	Name   string
	handle netns.NsHandle
	ns     *bnetns.NS // what berth's code is given
}

// newNS creates "berthnat-<role>-<random>" with lo up.
//
// Equivalent: ip netns add berthnat-$role-$rand; ip -n … link set lo up
func newNS(t *testing.T, role string) *testNS {
	t.Helper()
	needRoot(t)
	b := make([]byte, 4)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	n := &testNS{Name: "berthnat-" + role + "-" + hex.EncodeToString(b)}
	if out, err := exec.Command("ip", "netns", "add", n.Name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", n.Name, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", n.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", n.Name, err, out)
		}
	})
	h, err := netns.GetFromName(n.Name)
	if err != nil {
		t.Fatalf("open netns %s: %v", n.Name, err)
	}
	n.handle = h
	t.Cleanup(func() { h.Close() })
	if n.ns, err = bnetns.Open("/var/run/netns/" + n.Name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.ns.Close() })
	n.ip(t, "link", "set", "lo", "up")
	return n
}

// do runs fn on an OS thread moved into the namespace. The goroutine ends
// without UnlockOSThread, so the runtime ends the thread with it and no
// other goroutine ever runs in the namespace by accident.
func (n *testNS) do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(n.handle); err != nil {
			errc <- fmt.Errorf("enter netns %s: %w", n.Name, err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// must runs fn in the namespace and fails the test on an error.
func (n *testNS) must(t *testing.T, what string, fn func() error) {
	t.Helper()
	if err := n.do(fn); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// ip runs "ip -n <ns> args…".
func (n *testNS) ip(t *testing.T, args ...string) {
	t.Helper()
	args = append([]string{"-n", n.Name}, args...)
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// sysctl writes a /proc/sys/net file from a thread in the namespace, where
// it names the namespace's own setting.
//
// Equivalent: ip netns exec $ns sysctl -w $key=$value
func (n *testNS) sysctl(t *testing.T, key, value string) {
	t.Helper()
	path := "/proc/sys/" + strings.ReplaceAll(key, ".", "/")
	n.must(t, "sysctl "+key, func() error { return os.WriteFile(path, []byte(value), 0o644) })
}

// output runs a command in the namespace and returns its stdout.
func (n *testNS) output(t *testing.T, name string, args ...string) string {
	t.Helper()
	var out []byte
	n.must(t, name, func() error {
		var err error
		out, err = exec.Command(name, args...).Output()
		if ee, ok := err.(*exec.ExitError); ok {
			err = fmt.Errorf("%w: %s", err, ee.Stderr)
		}
		return err
	})
	return string(out)
}
