package integration

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/internal/lab"
)

// pingTimeout bounds one ping that should succeed (IPv6 neighbour discovery
// and a loaded machine can delay the first reply).
const pingTimeout = 10 * time.Second

// env is one test's lab: its own host and outside namespaces, its own data,
// lease and cache directories, and a libcni runner that executes the built
// plugins inside the host namespace.
type env struct {
	t        testing.TB
	w        *lab.World
	r        *lab.Runner
	dir      string
	dataDir  string // bridge "dataDir"
	ipamDir  string // host-local "dataDir"
	portsDir string // portmap "dataDir": this host's port reservations
	cacheDir string // libcni's cache
	network  string // network name, unique per test
}

// newEnv makes a lab for t that needs the named plugin binaries.
func newEnv(t testing.TB, plugins ...string) *env {
	t.Helper()
	lab.RequireRoot(t)
	needBins(t, plugins...)
	dir := t.TempDir()
	w := lab.NewTestWorld(t)
	e := &env{
		t:        t,
		w:        w,
		dir:      dir,
		dataDir:  filepath.Join(dir, "berth"),
		ipamDir:  filepath.Join(dir, "ipam"),
		portsDir: filepath.Join(dir, "ports"),
		cacheDir: filepath.Join(dir, "cache"),
		network:  "berth-" + w.ID,
	}
	e.r = lab.NewRunner(w.Host, []string{bins.Dir}, e.cacheDir, lab.TestLog{TB: t})
	return e
}

// conf loads conflist/<file> isolated for this test: the test's network
// name and data directories. edit, when not nil, changes each plugin.
func (e *env) conf(file string, o lab.ConflistOptions) *lab.Conflist {
	e.t.Helper()
	if o.Name == "" {
		o.Name = e.network
	}
	o.DataDir = e.dataDir
	o.IPAMDataDir = e.ipamDir
	o.PortmapDir = e.portsDir
	c, err := lab.LoadConflist(filepath.Join(repoRoot, "conflist", file), o)
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

// in returns e reporting to t (a subtest of e's test).
func (e *env) in(t testing.TB) *env {
	c := *e
	c.t = t
	return &c
}

func (e *env) bridgeConf() *lab.Conflist { return e.conf("bridge.conflist", lab.ConflistOptions{}) }

// container is one container namespace attached (or to be attached) to a network.
type container struct {
	name string
	ns   *lab.NS
	att  lab.Attachment
	res  types.Result
	v4   netip.Prefix // from the result
	v6   netip.Prefix
}

func (c *container) String() string { return c.name }

// newContainer creates a container namespace; the container ID is
// "<name>-<world id>".
func (e *env) newContainer(ctx context.Context, name string) *container {
	e.t.Helper()
	ns, err := e.w.AddContainer(ctx, name)
	if err != nil {
		e.t.Fatal(err)
	}
	return &container{
		name: name,
		ns:   ns,
		att:  lab.Attachment{ContainerID: name + "-" + e.w.ID, NetNS: ns.Path, IfName: "eth0"},
	}
}

// add runs ADD for c and records its addresses. It returns the error
// rather than failing, for tests that expect failure or run in goroutines.
func (e *env) add(ctx context.Context, conf *lab.Conflist, c *container) error {
	res, err := e.r.Add(ctx, conf.List, c.att)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", c.att.ContainerID, err)
	}
	c.res = res
	addrs, err := lab.ResultAddrs(res)
	if err != nil {
		return fmt.Errorf("ADD %s: convert result: %w", c.att.ContainerID, err)
	}
	c.v4, _ = lab.Pick(addrs, 4)
	c.v6, _ = lab.Pick(addrs, 6)
	return nil
}

// addContainers creates and ADDs the named containers, failing t on error.
func (e *env) addContainers(ctx context.Context, conf *lab.Conflist, names ...string) []*container {
	e.t.Helper()
	var cs []*container
	for _, n := range names {
		c := e.newContainer(ctx, n)
		if err := e.add(ctx, conf, c); err != nil {
			e.t.Fatal(err)
		}
		if !c.v4.IsValid() || !c.v6.IsValid() {
			e.t.Fatalf("ADD %s: result lacks an IPv4 or IPv6 address (dual-stack conflist): %v", c.att.ContainerID, c.res)
		}
		cs = append(cs, c)
	}
	return cs
}

// pingAll pings every (from, to) pair concurrently, reporting each failure.
func pingAll(ctx context.Context, t testing.TB, pairs []pingPair) {
	t.Helper()
	var wg sync.WaitGroup
	for _, p := range pairs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.from.ns.PingWithin(ctx, p.to, pingTimeout); err != nil {
				t.Errorf("%s → %s (%s): %v", p.from, p.toName, p.to, err)
			}
		}()
	}
	wg.Wait()
}

type pingPair struct {
	from   *container
	to     netip.Addr
	toName string
}

// state is what berth left on the host for one container.
type state struct {
	veths  []lab.Link
	leases []string
	nft    []string // lines of the netfilter dump that name the container
	how    string   // how netfilter was read
}

func (s state) empty() bool { return len(s.veths) == 0 && len(s.leases) == 0 && len(s.nft) == 0 }

func (s state) String() string {
	var b strings.Builder
	for _, l := range s.veths {
		fmt.Fprintf(&b, "\n  host veth %s (alias %q)", l.Name, l.Alias)
	}
	for _, l := range s.leases {
		fmt.Fprintf(&b, "\n  lease %s", l)
	}
	for _, l := range s.nft {
		fmt.Fprintf(&b, "\n  netfilter (%s): %s", s.how, l)
	}
	if b.Len() == 0 {
		return " nothing"
	}
	return b.String()
}

// hostState collects the host veths, leases and masquerade state of the
// container with the given ID.
func (e *env) hostState(ctx context.Context, containerID string) state {
	e.t.Helper()
	var s state
	var err error
	if s.veths, err = e.w.Host.HostVethsOf(e.network, containerID); err != nil {
		e.t.Fatal(err)
	}
	if s.leases, err = lab.LeaseFiles(e.ipamDir, e.network, containerID); err != nil {
		e.t.Fatal(err)
	}
	dump, how, err := e.w.Host.NetfilterDump(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	s.how = how
	s.nft = lab.LinesContaining(dump, containerID)
	return s
}

// wantGone fails t unless nothing of containerID is left, polling briefly:
// the kernel removes a deleted namespace's veth peer asynchronously.
func (e *env) wantGone(ctx context.Context, what, containerID string) {
	e.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s := e.hostState(ctx, containerID)
		if s.empty() {
			return
		}
		if time.Now().After(deadline) {
			e.t.Errorf("%s: left behind for %s:%s", what, containerID, s)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// wantPresent fails t unless the container has a host veth, a lease per
// address family and masquerade state (so wantGone afterwards means something).
func (e *env) wantPresent(ctx context.Context, what, containerID string, families int) {
	e.t.Helper()
	s := e.hostState(ctx, containerID)
	e.t.Logf("%s: host state of %s:%s", what, containerID, s)
	if len(s.veths) != 1 {
		e.t.Errorf("%s: %d host veths with alias %q, want 1; host veths: %s", what, len(s.veths),
			lab.AttachmentAlias(e.network, containerID, "eth0"), e.describeVeths())
	}
	if len(s.leases) != families {
		e.t.Errorf("%s: %d lease files for %s under %s, want %d", what, len(s.leases), containerID, e.ipamDir, families)
	}
	if len(s.nft) < families {
		e.t.Errorf("%s: %d netfilter lines (%s) name %s, want at least %d (one masquerade element per address)", what, len(s.nft), s.how, containerID, families)
	}
	// The in-process listing is what a machine without the nft binary
	// relies on: it must see the same owner comments.
	dump, err := e.w.Host.NftDumpNetlink()
	if err != nil {
		e.t.Fatal(err)
	}
	if n := len(lab.LinesContaining(dump, containerID)); n < families {
		e.t.Errorf("%s: the in-process nftables listing has %d lines naming %s, want at least %d:\n%s", what, n, containerID, families, dump)
	}
}

func (e *env) describeVeths() string {
	vs, err := e.w.Host.HostVeths()
	if err != nil {
		return err.Error()
	}
	var parts []string
	for _, v := range vs {
		parts = append(parts, fmt.Sprintf("%s alias %q", v.Name, v.Alias))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// ifaceAddrs returns the global addresses on dev in ns.
func ifaceAddrs(t testing.TB, ns *lab.NS, dev string) []netip.Prefix {
	t.Helper()
	l, err := ns.LinkByName(dev)
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, a := range l.Addrs {
		if !a.Addr().IsLinkLocalUnicast() {
			out = append(out, a)
		}
	}
	return out
}

func hasAddr(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Addr() == a })
}

func testCtx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
