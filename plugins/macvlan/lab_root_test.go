package main

// The lab of the macvlan root tests. Each test makes its own "host"
// namespace (where libcni runs the built plugins), a "LAN" namespace
// joined to it by a veth pair standing in for the NIC — its host end,
// nic0, is the master; its LAN end, eth0, holds the LAN's gateway
// addresses — and container namespaces, all named
// "bmv-<pid>-<id>-<role>". Configs are conflist/macvlan.conflist, edited
// to point at the test's master and directories. Nothing touches the
// machine's own network namespace.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/internal/lab"
)

// nsPrefix starts the name of every namespace these tests create.
const nsPrefix = "bmv"

// The LAN of every bed: the subnets of conflist/macvlan.conflist.
const masterName = "nic0"

var (
	lanGW4  = netip.MustParsePrefix("192.168.1.1/24") // the LAN host (and gateway)
	lanGW6  = netip.MustParsePrefix("fd00:1::1/64")
	hostIP4 = netip.MustParsePrefix("192.168.1.2/24") // the host, on its master
	hostIP6 = netip.MustParsePrefix("fd00:1::2/64")
)

// Set once by build: the built plugins.
var (
	buildOnce sync.Once
	bins      *lab.Binaries
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if bins != nil {
		os.RemoveAll(bins.Dir)
	}
	if left, err := lab.ListNetns(fmt.Sprintf("%s-%d-", nsPrefix, os.Getpid())); err != nil || len(left) > 0 {
		fmt.Fprintf(os.Stderr, "macvlan: namespaces left behind: %v (%v)\n", left, err)
		code = max(code, 1)
	}
	os.Exit(code)
}

// build builds the plugins once, on the first root test that needs them,
// after sweeping namespaces a killed run left behind.
func build(t *testing.T) *lab.Binaries {
	t.Helper()
	buildOnce.Do(func() {
		if swept, err := lab.SweepStale(nsPrefix); err != nil || len(swept) > 0 {
			fmt.Fprintf(os.Stderr, "macvlan: swept namespaces of killed runs: %v (%v)\n", swept, err)
		}
		root, err := lab.RepoRoot()
		if err != nil {
			buildErr = err
			return
		}
		dir, err := os.MkdirTemp("", "bmv-bin-")
		if err != nil {
			buildErr = err
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		bins, buildErr = lab.Build(ctx, root, dir)
	})
	if buildErr != nil {
		t.Fatalf("building plugins: %v", buildErr)
	}
	if err := bins.Need("macvlan", "host-local", "static"); err != nil {
		t.Fatal(err)
	}
	return bins
}

// bed is one test's lab.
type bed struct {
	t        *testing.T
	ctx      context.Context
	id       string
	host     *lab.NS
	lan      *lab.NS
	run      *lab.Runner
	dataDir  string // macvlan's "dataDir" (records, per-master state)
	ipamDir  string // host-local's "dataDir" (leases)
	cacheDir string // libcni's cache
}

// newBed skips without root (fails under CI), builds the plugins, and makes
// the host and LAN namespaces with the NIC between them and the host's
// default routes via the LAN's gateway; all removed in cleanup.
func newBed(t *testing.T) *bed {
	t.Helper()
	lab.RequireRoot(t)
	build(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	tmp := t.TempDir()
	b := &bed{
		t: t, ctx: ctx, id: lab.RandomSuffix(6),
		dataDir:  filepath.Join(tmp, "berth"),
		ipamDir:  filepath.Join(tmp, "ipam"),
		cacheDir: filepath.Join(tmp, "cache"),
	}
	// Registered first, so it runs after every namespace's own cleanup.
	t.Cleanup(func() {
		if left, err := lab.ListNetns(b.nsName("")); err != nil || len(left) > 0 {
			t.Errorf("namespaces left behind: %v (%v)", left, err)
		}
	})
	b.host = b.newNS("host")
	b.lan = b.newNS("lan")
	err := lab.Veth(lab.VethEnd{NS: b.host, Name: masterName, Addrs: []netip.Prefix{hostIP4, hostIP6}},
		lab.VethEnd{NS: b.lan, Name: "eth0", Addrs: []netip.Prefix{lanGW4, lanGW6}})
	if err == nil {
		err = errors.Join(b.host.AddDefaultRoute(lanGW4.Addr()), b.host.AddDefaultRoute(lanGW6.Addr()))
	}
	if err != nil {
		t.Fatal(err)
	}
	b.run = lab.NewRunner(b.host, []string{bins.Dir}, b.cacheDir, lab.TestLog{TB: t})
	return b
}

func (b *bed) nsName(role string) string {
	return fmt.Sprintf("%s-%d-%s-%s", nsPrefix, os.Getpid(), b.id, role)
}

// newNS creates the namespace bmv-<pid>-<id>-<role> and deletes it in
// cleanup.
func (b *bed) newNS(role string) *lab.NS {
	b.t.Helper()
	n, err := lab.NewNS(b.ctx, b.nsName(role))
	if err != nil {
		b.t.Fatal(err)
	}
	b.t.Cleanup(func() {
		if err := n.Delete(); err != nil {
			b.t.Errorf("cleanup: %v", err)
		}
	})
	return n
}

// conf loads conflist/macvlan.conflist for this bed: master nic0, the
// bed's data and lease directories; then keys (JSON values) override or,
// when nil, remove the plugin's keys.
func (b *bed) conf(keys map[string]any) *lab.Conflist {
	b.t.Helper()
	root, err := lab.RepoRoot()
	if err != nil {
		b.t.Fatal(err)
	}
	c, err := lab.LoadConflist(filepath.Join(root, "conflist", "macvlan.conflist"), lab.ConflistOptions{
		IPAMDataDir: b.ipamDir,
		Edit: func(p map[string]any) {
			p["master"] = masterName
			p["dataDir"] = b.dataDir
			for k, v := range keys {
				if v == nil {
					delete(p, k)
				} else {
					p[k] = v
				}
			}
		},
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return c
}

// container makes a container namespace and the attachment eth0 in it.
func (b *bed) container(role string) (*lab.NS, lab.Attachment) {
	b.t.Helper()
	n := b.newNS(role)
	return n, lab.Attachment{ContainerID: b.id + "-" + role, NetNS: n.Path, IfName: "eth0"}
}

// add runs ADD and returns the result in 1.0 form; an error is fatal.
func (b *bed) add(c *lab.Conflist, a lab.Attachment) *types100.Result {
	b.t.Helper()
	res, err := b.run.AddResult(b.ctx, c.List, a)
	if err != nil {
		b.t.Fatal(err)
	}
	return res
}

// del runs DEL; an error is fatal.
func (b *bed) del(c *lab.Conflist, a lab.Attachment) {
	b.t.Helper()
	if err := b.run.Del(b.ctx, c.List, a); err != nil {
		b.t.Fatalf("DEL %s: %v", a.ContainerID, err)
	}
}

// resultPrefix returns the result's address of the family (4 or 6) with
// its prefix length.
func resultPrefix(t *testing.T, res *types100.Result, family int) netip.Prefix {
	t.Helper()
	ps, err := lab.ResultAddrs(res)
	if err != nil {
		t.Fatal(err)
	}
	p, ok := lab.Pick(ps, family)
	if !ok {
		t.Fatalf("result has no IPv%d address: %v", family, ps)
	}
	return p
}

func resultAddr(t *testing.T, res *types100.Result, family int) netip.Addr {
	t.Helper()
	return resultPrefix(t, res, family).Addr()
}

// resultMAC returns the MAC of the result's only interface.
func resultMAC(t *testing.T, res *types100.Result) string {
	t.Helper()
	if len(res.Interfaces) != 1 {
		t.Fatalf("result interfaces %v: want exactly the container's", res.Interfaces)
	}
	return res.Interfaces[0].Mac
}

func mustPing(t *testing.T, ctx context.Context, from *lab.NS, dst netip.Addr) {
	t.Helper()
	if err := from.PingWithin(ctx, dst, 5*time.Second); err != nil {
		t.Error(err)
	}
}

func mustNotPing(t *testing.T, ctx context.Context, from *lab.NS, dst netip.Addr, why string) {
	t.Helper()
	if err := from.PingWithin(ctx, dst, 2*time.Second); err == nil {
		t.Errorf("ping %s from %s succeeded, want no reply (%s)", dst, from, why)
	}
}

// promisc reads the master's promiscuous flag.
func (b *bed) promisc() bool {
	b.t.Helper()
	on, err := b.host.Promisc(masterName)
	if err != nil {
		b.t.Fatal(err)
	}
	return on
}

// hostLinks lists the names of the host's links other than lo and the
// master.
func (b *bed) hostLinks() []string {
	b.t.Helper()
	ls, err := b.host.Links()
	if err != nil {
		b.t.Fatal(err)
	}
	var out []string
	for _, l := range ls {
		if l.Name != "lo" && l.Name != masterName {
			out = append(out, l.Name)
		}
	}
	return out
}

// files lists the regular files under dir (none if it does not exist).
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() != "lock" && !strings.HasPrefix(d.Name(), "last_reserved_ip") {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// assertClean checks that the host holds nothing berth creates: no link
// but lo, the master and those named in keep; no record, master state or
// lease; the master's promiscuous mode as wantPromisc.
func (b *bed) assertClean(wantPromisc bool, keep ...string) {
	b.t.Helper()
	for _, l := range b.hostLinks() {
		if !slices.Contains(keep, l) {
			b.t.Errorf("host link left: %s", l)
		}
	}
	for _, f := range files(b.t, b.dataDir) {
		b.t.Errorf("berth file left: %s", f)
	}
	for _, f := range files(b.t, b.ipamDir) {
		b.t.Errorf("lease left: %s", f)
	}
	if got := b.promisc(); got != wantPromisc {
		b.t.Errorf("master %s promiscuous = %v, want %v", masterName, got, wantPromisc)
	}
}

// assertNoLinks checks that namespace n has no link but lo.
func assertNoLinks(t *testing.T, n *lab.NS) {
	t.Helper()
	ls, err := n.Links()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		if l.Name != "lo" {
			t.Errorf("%s: link %s (%s) left", n, l.Name, l.Type)
		}
	}
}
