package integration

import (
	"crypto/sha512"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/internal/lab"
)

// The three-container flow driven by cnitool (built from the pinned cni
// module) over conflist/bridge.conflist, run inside the host namespace.
// cnitool keeps its cache under the fixed /var/lib/cni; it runs in a private
// mount namespace with a temporary directory over /var/lib, so nothing of
// the machine's is touched.
func TestCNIToolThreeContainers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, bridgePlugins...)
	tool := cnitool(t)
	ctx := testCtx(t, 2*time.Minute)
	conf := e.bridgeConf()
	netDir := filepath.Join(e.dir, "net.d")
	if _, err := conf.Write(netDir); err != nil {
		t.Fatal(err)
	}
	varLib := filepath.Join(e.dir, "varlib")
	if err := os.MkdirAll(varLib, 0o755); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "CNI_PATH="+bins.Dir, "NETCONFPATH="+netDir, "CNI_IFNAME=eth0")
	run := func(verb string, c *container) (string, error) {
		cmd := lab.PrivateMountCommand(ctx, [][2]string{{varLib, "/var/lib"}}, tool, verb, e.network, c.ns.Path)
		cmd.Env = env
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := e.w.Host.Run(cmd); err != nil {
			return stdout.String(), fmt.Errorf("cnitool %s %s %s: %w: %s%s", verb, e.network, c.ns.Path, err, stdout.String(), stderr.String())
		}
		return stdout.String(), nil
	}

	var cs []*container
	for _, name := range []string{"c1", "c2", "c3"} {
		c := e.newContainer(ctx, name)
		c.att.ContainerID = cnitoolContainerID(c.ns.Path)
		out, err := run("add", c)
		if err != nil {
			t.Fatal(err)
		}
		r, err := types100.NewResult([]byte(out))
		if err != nil {
			t.Fatalf("decode cnitool add output: %v\n%s", err, out)
		}
		for _, ip := range r.(*types100.Result).IPs {
			a, _ := netip.AddrFromSlice(ip.Address.IP)
			ones, _ := ip.Address.Mask.Size()
			if a.Unmap().Is4() {
				c.v4 = netip.PrefixFrom(a.Unmap(), ones)
			} else {
				c.v6 = netip.PrefixFrom(a, ones)
			}
		}
		if !c.v4.IsValid() || !c.v6.IsValid() {
			t.Fatalf("cnitool add %s: result lacks an address of a family:\n%s", c, out)
		}
		cache := filepath.Join(varLib, "cni", "results", e.network+"-"+c.att.ContainerID+"-eth0")
		if _, err := os.Stat(cache); err != nil {
			t.Errorf("cnitool's cache did not land in the private /var/lib: %v", err)
		}
		e.wantPresent(ctx, "after cnitool add", c.att.ContainerID, 2)
		cs = append(cs, c)
	}
	for _, c := range cs {
		if _, err := run("check", c); err != nil {
			t.Error(err)
		}
	}
	var pairs []pingPair
	for _, from := range cs {
		pairs = append(pairs, pingPair{from, gw4, "gateway"})
		for _, to := range cs {
			if to != from {
				pairs = append(pairs, pingPair{from, to.v4.Addr(), to.name}, pingPair{from, to.v6.Addr(), to.name})
			}
		}
	}
	pingAll(ctx, t, pairs)
	for _, c := range cs {
		if _, err := run("del", c); err != nil {
			t.Error(err)
		}
		e.wantGone(ctx, "after cnitool del", c.att.ContainerID)
	}
	if vs, err := e.w.Host.HostVeths(); err != nil || len(vs) != 0 {
		t.Errorf("host veths left after cnitool del: %s (%v)", e.describeVeths(), err)
	}
}

// cnitoolContainerID is the container ID cnitool derives from the netns path.
func cnitoolContainerID(netnsPath string) string {
	s := sha512.Sum512([]byte(netnsPath))
	return fmt.Sprintf("cnitool-%x", s[:10])
}
