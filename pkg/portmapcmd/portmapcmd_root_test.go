package portmapcmd

import (
	"bytes"
	"context"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// testHost makes a throwaway "host" namespace with a veth whose end bpv0
// holds the containers' gateway, 10.88.0.1/16 (the route to them), and
// opens it; everything goes in t.Cleanup.
func testHost(t *testing.T) (*lab.NS, *netns.NS) {
	t.Helper()
	lab.RequireRoot(t)
	ctx := context.Background()
	l, err := lab.NewNS(ctx, "bpmc-"+lab.RandomSuffix(6))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Delete(); err != nil {
			t.Error(err)
		}
	})
	for _, c := range [][]string{
		{"link", "add", "bpv0", "type", "veth", "peer", "name", "bpv1"},
		{"addr", "add", "10.88.0.1/16", "dev", "bpv0"},
		{"link", "set", "bpv0", "up"},
		{"link", "set", "bpv1", "up"},
	} {
		if out, err := l.Output(ctx, "ip", c...); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	n, err := netns.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return l, n
}

// The commands in one namespace, in-process: ADD claims and forwards
// (route_localnet on the interface to the container), CHECK finds it,
// another container's claim of the port is refused with 101 naming the
// holder, a port a host socket has bound with 102, DEL frees it (twice),
// and GC frees an attachment the runtime no longer lists.
func TestCommandsInANamespace(t *testing.T) {
	l, n := testHost(t)
	ctx := context.Background()
	dir := t.TempDir()
	m8080 := mappings(`{"hostPort":8080,"containerPort":80,"protocol":"tcp"}`, `{"hostPort":5353,"containerPort":53,"protocol":"udp"}`)
	c1 := cmdArgs("c1", stdin(dir, prev(prevEth0), m8080))
	var out bytes.Buffer
	if err := add(ctx, n, c1, &out); err != nil {
		t.Fatalf("ADD c1: %v", err)
	}
	if !strings.Contains(out.String(), "10.88.0.5/16") {
		t.Errorf("ADD c1 printed %q, want the prevResult", out.String())
	}
	if err := check(ctx, n, c1); err != nil {
		t.Errorf("CHECK c1: %v", err)
	}
	if v, err := n.ReadSysctl("ipv4/conf/bpv0/route_localnet"); err != nil || v != "1" {
		t.Errorf("route_localnet on bpv0 = %q (%v), want 1", v, err)
	}
	held, found, err := hostport.Open(dir).Held(mustOwner(t, c1))
	if err != nil || !found {
		t.Fatalf("c1 holds nothing after ADD: %v", err)
	}

	prev6 := strings.Replace(prevEth0, "10.88.0.5", "10.88.0.6", 1)
	c2 := cmdArgs("c2", stdin(dir, prev(prev6), mappings(`{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"10.88.0.1"}`)))
	err = add(ctx, n, c2, &out)
	if cnierr.Code(err) != cnierr.CodePortHeld || !strings.Contains(err.Error(), "container c1") {
		t.Errorf("ADD c2 of c1's port = %v (code %d), want 101 naming c1", err, cnierr.Code(err))
	}
	var ln net.Listener
	if err := l.Do(func() (err error) { ln, err = net.Listen("tcp4", "0.0.0.0:7000"); return err }); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	c3 := cmdArgs("c3", stdin(dir, prev(prev6), mappings(`{"hostPort":7000,"containerPort":80,"protocol":"tcp"}`)))
	if err := add(ctx, n, c3, &out); cnierr.Code(err) != cnierr.CodePortInUse {
		t.Errorf("ADD c3 of a bound port = %v (code %d), want 102", err, cnierr.Code(err))
	}

	for i := range 2 {
		if err := del(ctx, n, c1); err != nil {
			t.Fatalf("DEL c1 #%d: %v", i+1, err)
		}
	}
	if err := check(ctx, n, c1); err == nil {
		t.Error("CHECK c1 after DEL passed")
	}
	if err := hostport.NewNFT(n).Check(held); err == nil || !strings.Contains(err.Error(), "has no element tcp . 8080") {
		t.Errorf("the table after DEL c1: %v, want c1's elements gone", err)
	}

	// GC: c2 (now free to take 8080) is valid, c1 (added again) is not.
	if err := add(ctx, n, c1, &out); err != nil {
		t.Fatalf("ADD c1 again: %v", err)
	}
	if err := add(ctx, n, c2, &out); cnierr.Code(err) != cnierr.CodePortHeld {
		t.Fatalf("ADD c2 = %v, want 101 (c1 holds 8080 on every address)", err)
	}
	c2 = cmdArgs("c2", stdin(dir, prev(prev6), mappings(`{"hostPort":9090,"containerPort":90,"protocol":"tcp"}`)))
	if err := add(ctx, n, c2, &out); err != nil {
		t.Fatalf("ADD c2: %v", err)
	}
	gcArgs := &skel.CmdArgs{StdinData: stdin(dir, `"cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]`)}
	if err := gc(ctx, n, gcArgs); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if err := check(ctx, n, c2); err != nil {
		t.Errorf("CHECK c2 after GC: %v", err)
	}
	if _, found, _ := hostport.Open(dir).Held(mustOwner(t, c1)); found {
		t.Error("GC left c1, which the runtime no longer lists")
	}
	if err := status(ctx, n, &skel.CmdArgs{StdinData: stdin(dir)}); err != nil {
		t.Errorf("STATUS: %v", err)
	}
}

func mustOwner(t *testing.T, args *skel.CmdArgs) owner.Owner {
	t.Helper()
	_, o, err := load(args)
	if err != nil {
		t.Fatal(err)
	}
	return o
}
