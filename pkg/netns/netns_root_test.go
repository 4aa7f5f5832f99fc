package netns_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/netns"
)

func testNS(t *testing.T) *lab.NS {
	t.Helper()
	lab.RequireRoot(t)
	n, err := lab.NewNS(context.Background(), "bnetns-"+lab.RandomSuffix(6))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			t.Error(err)
		}
	})
	return n
}

// TestOpenActsInThatNamespace: the netlink handle, sysctls and programs of
// an NS act in its namespace, from any goroutine, never in the caller's.
func TestOpenActsInThatNamespace(t *testing.T) {
	l := testNS(t)
	n, err := netns.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if n.IsHost() {
		t.Fatal("a test namespace is reported as the host's")
	}
	host, err := netns.Host()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	if !host.IsHost() {
		t.Fatal("Host() is not the host's")
	}
	hostFwd, err := host.ReadSysctl("ipv4/ip_forward")
	if err != nil {
		t.Fatal(err)
	}
	// Many goroutines at once: each must land in n and leave the host alone.
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			links, err := n.Netlink().LinkList()
			if err == nil && (len(links) != 1 || links[0].Attrs().Name != "lo") {
				err = errors.New("netlink handle lists links that are not the test namespace's")
			}
			if err == nil {
				err = n.WriteSysctl("ipv4/ip_forward", "1")
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if v, err := l.ReadSysctl("net.ipv4.ip_forward"); err != nil || v != "1" {
		t.Fatalf("ip_forward in the test namespace = %q, %v; want 1", v, err)
	}
	if v, err := host.ReadSysctl("ipv4/ip_forward"); err != nil || v != hostFwd {
		t.Fatalf("the host's ip_forward changed: %q -> %q (%v)", hostFwd, v, err)
	}
	out, err := n.Run("", "ip", "-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 1 || !strings.Contains(lines[0], " lo:") {
		t.Fatalf("ip link show in the namespace printed %q", out)
	}
	if err := n.EnsureSysctl("ipv4/ip_forward", "1"); err != nil {
		t.Fatal(err)
	}
}

func TestOpenErrors(t *testing.T) {
	lab.RequireRoot(t)
	if _, err := netns.Open(filepath.Join(t.TempDir(), "none")); !errors.Is(err, netns.ErrGone) {
		t.Errorf("missing path: %v, want ErrGone", err)
	}
	f := filepath.Join(t.TempDir(), "plain")
	if err := os.WriteFile(f, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := netns.Open(f); !errors.Is(err, netns.ErrNotNetns) {
		t.Errorf("plain file: %v, want ErrNotNetns", err)
	}
	if _, err := netns.Open("/proc/self/ns/uts"); !errors.Is(err, netns.ErrNotNetns) {
		t.Errorf("a UTS namespace: %v, want ErrNotNetns", err)
	}
	// This goroutine's thread is in the namespace the process started in
	// (lab's Do may have wedged the main thread elsewhere: /proc/self is
	// not the test's to trust).
	runtime.LockOSThread()
	n, err := netns.Open("/proc/thread-self/ns/net")
	runtime.UnlockOSThread()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if !n.IsHost() {
		t.Error("the process's own namespace opened by path is not IsHost")
	}
}

func TestNFTInNamespace(t *testing.T) {
	l := testNS(t)
	n, err := netns.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	err = n.WithNFT(func(c *nftables.Conn) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
}

// The xfrm handle acts in its namespace: a policy added through it is
// there and nowhere else (the route handle would have put it in the
// caller's namespace: vishvananda/netlink opens a socket there for a
// family the handle lacks).
func TestXfrmInNamespace(t *testing.T) {
	l := testNS(t)
	n, err := netns.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	host, err := netns.Host()
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	hx, err := host.Xfrm()
	if err != nil {
		t.Fatal(err)
	}
	before, err := hx.XfrmPolicyList(netlink.FAMILY_ALL) // read only
	if err != nil {
		t.Fatal(err)
	}
	x, err := n.Xfrm()
	if err != nil {
		t.Fatal(err)
	}
	pol := &netlink.XfrmPolicy{
		Src: &net.IPNet{IP: net.IPv4(192, 0, 2, 1).To4(), Mask: net.CIDRMask(32, 32)},
		Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)},
		Dir: netlink.XFRM_DIR_OUT, Priority: 4242,
		Tmpls: []netlink.XfrmPolicyTmpl{{Src: net.IPv4zero.To4(), Dst: net.IPv4zero.To4(), Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT, Reqid: 7}},
	}
	if err := x.XfrmPolicyAdd(pol); err != nil {
		t.Fatal(err)
	}
	in, err := x.XfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil || len(in) != 1 || in[0].Priority != 4242 {
		t.Fatalf("policies in the test namespace: %v, %v", in, err)
	}
	after, err := hx.XfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil || len(after) != len(before) {
		t.Fatalf("the process's own namespace went from %d to %d policies (%v)", len(before), len(after), err)
	}
}
