package main

// Root tests of the bridge plugin's options, through the built binaries:
// each test makes its own "host" namespace (where libcni runs the plugins)
// and container namespaces, all named "bopt-<pid>-<id>-<role>", writes its
// config inline and asserts on the kernel state and on real traffic there.
// Attachment records, host-local leases and libcni's cache live in the
// test's temporary directories. Nothing touches the machine's own network
// namespace.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
)

// nsPrefix starts the name of every namespace these tests create.
const nsPrefix = "bopt"

// Set once by TestMain (as root): the built plugins.
var (
	bins     *lab.Binaries
	buildErr error
)

func TestMain(m *testing.M) { os.Exit(runTests(m)) }

func runTests(m *testing.M) int {
	if !lab.IsRoot() {
		return m.Run() // every root test skips (or fails under CI) by itself
	}
	// A run killed before its cleanups leaves namespaces behind.
	if swept, err := lab.SweepStale(nsPrefix); err != nil {
		fmt.Fprintf(os.Stderr, "bridge: sweeping stale namespaces: %v\n", err)
	} else if len(swept) > 0 {
		fmt.Fprintf(os.Stderr, "bridge: removed %d namespaces of killed runs\n", len(swept))
	}
	root, err := lab.RepoRoot()
	if err != nil {
		buildErr = err
		return m.Run()
	}
	dir, err := os.MkdirTemp("", "bopt-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	bins, buildErr = lab.Build(ctx, root, dir)
	cancel()
	code := m.Run()
	if left, err := lab.ListNetns(fmt.Sprintf("%s-%d-", nsPrefix, os.Getpid())); err != nil || len(left) > 0 {
		fmt.Fprintf(os.Stderr, "bridge: namespaces left behind: %v (%v)\n", left, err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// bed is one test's lab: a host namespace, its runner and the directories
// that hold the plugins' files.
type bed struct {
	t        *testing.T
	ctx      context.Context
	id       string
	host     *lab.NS
	run      *lab.Runner
	dataDir  string // the bridge's "dataDir" (attachment records)
	ipamDir  string // host-local's "dataDir" (leases)
	cacheDir string // libcni's cache
}

// newBed skips without root (fails under CI), needs the built bridge,
// host-local and static, and makes the host namespace, removed in cleanup.
func newBed(t *testing.T) *bed {
	t.Helper()
	lab.RequireRoot(t)
	if buildErr != nil {
		t.Fatalf("building plugins: %v", buildErr)
	}
	if bins == nil {
		t.Fatal("plugins were not built")
	}
	if err := bins.Need("bridge", "host-local", "static"); err != nil {
		t.Fatal(err)
	}
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
	b.run = lab.NewRunner(b.host, []string{bins.Dir}, b.cacheDir, lab.TestLog{TB: t})
	return b
}

func (b *bed) nsName(role string) string {
	return fmt.Sprintf("%s-%d-%s-%s", nsPrefix, os.Getpid(), b.id, role)
}

// newNS creates the namespace bopt-<pid>-<id>-<role> and deletes it in
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

// conflist wraps one inline plugin config in a 1.1.0 conflist named
// network, with the bridge's and host-local's data directories pointed
// into the test's temporary directory.
func (b *bed) conflist(network, plugin string) *lab.Conflist {
	b.t.Helper()
	raw := fmt.Sprintf(`{"cniVersion":"1.1.0","name":%q,"plugins":[%s]}`, network, plugin)
	c, err := lab.EditConflist([]byte(raw), lab.ConflistOptions{DataDir: b.dataDir, IPAMDataDir: b.ipamDir})
	if err != nil {
		b.t.Fatalf("conflist %s: %v", raw, err)
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
	r, err := b.run.Add(b.ctx, c.List, a)
	if err != nil {
		b.t.Fatalf("ADD %s: %v", a.ContainerID, err)
	}
	res, err := lab.Result100(r)
	if err != nil {
		b.t.Fatalf("ADD %s: %v", a.ContainerID, err)
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

// hostVethOf returns the host veth named in a result (interfaces[1]).
func hostVethOf(t *testing.T, res *types100.Result) string {
	t.Helper()
	if len(res.Interfaces) < 2 || !strings.HasPrefix(res.Interfaces[1].Name, lab.HostVethPrefix) {
		t.Fatalf("result interfaces %v: want [bridge, %s… host veth, container]", res.Interfaces, lab.HostVethPrefix)
	}
	return res.Interfaces[1].Name
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

// resultAddr returns the result's only address of the family (4 or 6).
func resultAddr(t *testing.T, res *types100.Result, family int) netip.Prefix {
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

func TestHairpinMode(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-hairpin", `{"type":"bridge","bridge":"bopt-hair","isGateway":true,"hairpinMode":true,
		"ipam":{"type":"host-local","subnet":"10.50.0.0/24"}}`)
	_, a := b.container("c1")
	veth := hostVethOf(t, b.add(c, a))

	h, err := b.host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(veth)
	if err != nil {
		t.Fatal(err)
	}
	pi, err := h.LinkGetProtinfo(l)
	if err != nil {
		t.Fatalf("bridge port flags of %s: %v", veth, err)
	}
	if !pi.Hairpin {
		t.Errorf("host veth %s: hairpin off (port flags %s), want on", veth, pi.String())
	}
}

func TestPromiscMode(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-promisc", `{"type":"bridge","bridge":"bopt-prom","isGateway":true,"promiscMode":true,
		"ipam":{"type":"host-local","subnet":"10.51.0.0/24"}}`)
	_, a := b.container("c1")
	b.add(c, a)
	if br := nlLink(t, b.host, "bopt-prom").Attrs(); br.RawFlags&unix.IFF_PROMISC == 0 {
		t.Errorf("bridge bopt-prom flags %#x lack IFF_PROMISC", br.RawFlags)
	}
}

// Two isolated ports cannot reach each other; both reach the gateway (the
// bridge itself, not a port) and a port that is not isolated.
func TestPortIsolation(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-isol", `{"type":"bridge","bridge":"bopt-isol","isGateway":true,"portIsolation":true,
		"ipam":{"type":"host-local","subnet":"10.52.0.0/24"}}`)
	// The control's port on the same bridge is not isolated: it reaches
	// both (isolation only parts isolated ports from each other).
	open := b.conflist("bopt-open", `{"type":"bridge","bridge":"bopt-isol","isGateway":true,
		"ipam":{"type":"host-local","subnet":"10.52.0.0/24","rangeStart":"10.52.0.200","rangeEnd":"10.52.0.250"}}`)
	gw := netip.MustParseAddr("10.52.0.1")
	n1, a1 := b.container("c1")
	n2, a2 := b.container("c2")
	n3, a3 := b.container("control")
	r1, r2 := b.add(c, a1), b.add(c, a2)
	b.add(open, a3)
	ip1, ip2 := resultAddr(t, r1, 4).Addr(), resultAddr(t, r2, 4).Addr()

	h, err := b.host.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, r := range []*types100.Result{r1, r2} {
		veth := hostVethOf(t, r)
		l, err := h.LinkByName(veth)
		if err != nil {
			t.Fatal(err)
		}
		if pi, err := h.LinkGetProtinfo(l); err != nil || !pi.Isolated {
			t.Errorf("host veth %s: isolated = %v (%v), want true", veth, pi.Isolated, err)
		}
	}
	mustPing(t, b.ctx, n1, gw)
	mustPing(t, b.ctx, n2, gw)
	mustPing(t, b.ctx, n3, ip1)
	mustPing(t, b.ctx, n3, ip2)
	mustNotPing(t, b.ctx, n1, ip2, "both ports isolated")
	mustNotPing(t, b.ctx, n2, ip1, "both ports isolated")
}

func TestMTU(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-mtu", `{"type":"bridge","bridge":"bopt-mtu","isGateway":true,"mtu":1400,
		"ipam":{"type":"host-local","subnet":"10.53.0.0/24"}}`)
	n, a := b.container("c1")
	veth := hostVethOf(t, b.add(c, a))
	if got := nlLink(t, n, "eth0").Attrs().MTU; got != 1400 {
		t.Errorf("container eth0 MTU %d, want 1400", got)
	}
	if got := nlLink(t, b.host, veth).Attrs().MTU; got != 1400 {
		t.Errorf("host veth %s MTU %d, want 1400", veth, got)
	}
}

// checkMAC checks that eth0 in n and the result's container interface both
// carry want.
func checkMAC(t *testing.T, n *lab.NS, res *types100.Result, want string) {
	t.Helper()
	if got := nlLink(t, n, "eth0").Attrs().HardwareAddr.String(); got != want {
		t.Errorf("container eth0 MAC %s, want %s", got, want)
	}
	if len(res.Interfaces) != 3 || res.Interfaces[2].Mac != want {
		t.Errorf("result interfaces %v: want the container's with MAC %s", res.Interfaces, want)
	}
}

// With no MAC asked for, berth picks both ends' MACs itself: set, not
// kernel-chosen (addr_assign_type 3, which udev's MACAddressPolicy leaves
// alone; the kernel's own random ones are 1), unicast, locally
// administered, different per container, and the result names what the
// kernel has.
func TestChosenMACs(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-mac", `{"type":"bridge","bridge":"bopt-mac","isGateway":true,
		"ipam":{"type":"host-local","subnet":"10.54.2.0/24"}}`)
	seen := map[string]bool{}
	for _, role := range []string{"c1", "c2"} {
		n, a := b.container(role)
		res := b.add(c, a)
		host := hostVethOf(t, res)
		for _, got := range []struct{ what, result, kernel string }{
			{"host veth " + host, res.Interfaces[1].Mac, nlLink(t, b.host, host).Attrs().HardwareAddr.String()},
			{role + " eth0", res.Interfaces[2].Mac, nlLink(t, n, "eth0").Attrs().HardwareAddr.String()},
		} {
			if got.result != got.kernel {
				t.Errorf("%s: result says MAC %s, kernel has %s", got.what, got.result, got.kernel)
			}
			mac, err := net.ParseMAC(got.kernel)
			if err != nil || mac[0]&0x01 != 0 || mac[0]&0x02 == 0 {
				t.Errorf("%s: MAC %s is not unicast and locally administered (%v)", got.what, got.kernel, err)
			}
			if seen[got.kernel] {
				t.Errorf("%s: MAC %s used twice", got.what, got.kernel)
			}
			seen[got.kernel] = true
		}
		for _, end := range []struct {
			ns   *lab.NS
			name string
		}{{b.host, host}, {n, "eth0"}} {
			// ip netns exec mounts a sysfs of that namespace.
			out, err := exec.CommandContext(b.ctx, "ip", "netns", "exec", end.ns.Name, "cat",
				"/sys/class/net/"+end.name+"/addr_assign_type").CombinedOutput()
			if err != nil {
				t.Fatalf("addr_assign_type of %s: %v: %s", end.name, err, out)
			}
			if got := strings.TrimSpace(string(out)); got != "3" {
				t.Errorf("%s in %s: addr_assign_type %s, want 3 (set by berth)", end.name, end.ns.Name, got)
			}
		}
	}
}

func TestRuntimeConfigMAC(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-rtmac", `{"type":"bridge","bridge":"bopt-rtmac","isGateway":true,
		"capabilities":{"mac":true},
		"ipam":{"type":"host-local","subnet":"10.54.0.0/24"}}`)
	n, a := b.container("c1")
	const mac = "02:42:0a:36:00:77"
	a.CapabilityArgs = map[string]any{"mac": mac}
	checkMAC(t, n, b.add(c, a), mac)
}

func TestCNIArgsMAC(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-argmac", `{"type":"bridge","bridge":"bopt-argmac","isGateway":true,
		"ipam":{"type":"host-local","subnet":"10.54.1.0/24"}}`)
	n, a := b.container("c1")
	const mac = "02:42:0a:36:01:78"
	// IgnoreUnknown: host-local reads CNI_ARGS too and knows no MAC.
	a.Args = [][2]string{{"IgnoreUnknown", "1"}, {"MAC", mac}}
	checkMAC(t, n, b.add(c, a), mac)
}

func TestStaticIPAM(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-static", `{"type":"bridge","bridge":"bopt-static","isGateway":true,
		"ipam":{"type":"static","addresses":[{"address":"10.55.0.9/24","gateway":"10.55.0.1"}]}}`)
	n, a := b.container("c1")
	res := b.add(c, a)
	want := netip.MustParsePrefix("10.55.0.9/24")
	if got := resultAddr(t, res, 4); got != want {
		t.Errorf("result address %s, want %s", got, want)
	}
	if got := globalAddrs(t, n, "eth0"); !slices.Equal(got, []netip.Prefix{want}) {
		t.Errorf("container eth0 addresses %v, want [%s]", got, want)
	}
	gw := netip.MustParsePrefix("10.55.0.1/24")
	if got := globalAddrs(t, b.host, "bopt-static"); !slices.Contains(got, gw) {
		t.Errorf("bridge addresses %v lack gateway %s", got, gw)
	}
	mustPing(t, b.ctx, n, gw.Addr())
}

func TestCapabilityIPs(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-ips", `{"type":"bridge","bridge":"bopt-ips","isGateway":true,
		"capabilities":{"ips":true},
		"ipam":{"type":"host-local","subnet":"10.56.0.0/24"}}`)
	n, a := b.container("c1")
	a.CapabilityArgs = map[string]any{"ips": []string{"10.56.0.77/24"}}
	res := b.add(c, a)
	want := netip.MustParsePrefix("10.56.0.77/24")
	if got := resultAddr(t, res, 4); got != want {
		t.Errorf("result address %s, want %s", got, want)
	}
	if got := globalAddrs(t, n, "eth0"); !slices.Equal(got, []netip.Prefix{want}) {
		t.Errorf("container eth0 addresses %v, want [%s]", got, want)
	}
}

// isGateway false: the bridge gets no address, the container no route
// beyond its own subnet, and the host no route to the subnet.
func TestIsGatewayFalse(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-nogw", `{"type":"bridge","bridge":"bopt-nogw","isGateway":false,
		"ipam":{"type":"host-local","subnet":"10.57.0.0/24"}}`)
	n, a := b.container("c1")
	res := b.add(c, a)
	addr := resultAddr(t, res, 4)
	if got := globalAddrs(t, b.host, "bopt-nogw"); len(got) != 0 {
		t.Errorf("bridge has addresses %v, want none", got)
	}
	if len(res.Routes) != 0 {
		t.Errorf("result routes %v, want none", res.Routes)
	}
	rs, err := n.Routes()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Dst != addr.Masked() || r.Gw.IsValid() {
			t.Errorf("container route %+v: want only the on-link route to %s", r, addr.Masked())
		}
	}
	hrs, err := b.host.Routes()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range hrs {
		if r.Dev == "bopt-nogw" || r.Dst.Overlaps(addr.Masked()) {
			t.Errorf("host route %+v: want none via the bridge or to %s", r, addr.Masked())
		}
	}
}

// enabledad: the container's IPv6 address went through duplicate address
// detection (accept_dad on) and the ADD returned once it was no longer
// tentative.
func TestEnableDAD(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-dad", `{"type":"bridge","bridge":"bopt-dad","isGateway":true,"enabledad":true,
		"ipam":{"type":"host-local","subnet":"fd00:58::/64"}}`)
	n, a := b.container("c1")
	want := resultAddr(t, b.add(c, a), 6)
	if v, err := n.ReadSysctl("net/ipv6/conf/eth0/accept_dad"); err != nil || v == "0" {
		t.Errorf("container eth0 accept_dad = %q (%v), want DAD on", v, err)
	}
	found := false
	for _, ad := range nlAddrs(t, n, "eth0", netlink.FAMILY_V6) {
		ip, _ := netip.AddrFromSlice(ad.IP)
		if ip != want.Addr() {
			continue
		}
		found = true
		if ad.Flags&unix.IFA_F_NODAD != 0 {
			t.Errorf("address %s has nodad, want DAD run", want)
		}
		if ad.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0 {
			t.Errorf("address %s flags %#x: tentative or dadfailed after ADD", want, ad.Flags)
		}
	}
	if !found {
		t.Errorf("address %s not on container eth0", want)
	}
}

// macspoofchk: a container that changes its MAC by hand is cut off, one
// that keeps its own is not; a container on the same bridge without
// macspoofchk changes its MAC and still gets through (so the drop is the
// rule's doing). DEL removes exactly the container's rule.
func TestMacSpoofCheck(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-spoof", `{"type":"bridge","bridge":"bopt-spoof","isGateway":true,"macspoofchk":true,
		"ipam":{"type":"host-local","subnet":"10.58.0.0/24"}}`)
	// The control's network shares the bridge and subnet (a bridge holds
	// one IPv4 gateway), from a range of its own.
	open := b.conflist("bopt-open", `{"type":"bridge","bridge":"bopt-spoof","isGateway":true,
		"ipam":{"type":"host-local","subnet":"10.58.0.0/24","rangeStart":"10.58.0.200","rangeEnd":"10.58.0.250"}}`)
	gw := netip.MustParseAddr("10.58.0.1")
	n1, a1 := b.container("spoofer")
	n2, a2 := b.container("honest")
	n3, a3 := b.container("control")
	b.add(c, a1)
	b.add(c, a2)
	b.add(open, a3)

	comments, _ := spoofRules(t, b.host)
	for _, a := range []lab.Attachment{a1, a2} {
		if !slices.Contains(comments, spoofTag("bopt-spoof", a)) {
			t.Errorf("no rule %q in bridge berth-spoof: %q", spoofTag("bopt-spoof", a), comments)
		}
	}
	if len(comments) != 2 {
		t.Errorf("bridge berth-spoof has rules %q, want exactly the two containers'", comments)
	}
	for _, n := range []*lab.NS{n1, n2} {
		mustPing(t, b.ctx, n, gw)
	}
	mustPing(t, b.ctx, n3, gw)

	setMAC(t, n1, "eth0", "02:00:de:ad:be:ef")
	setMAC(t, n3, "eth0", "02:00:de:ad:be:f0")
	mustNotPing(t, b.ctx, n1, gw, "source MAC changed under macspoofchk")
	mustPing(t, b.ctx, n2, gw)
	mustPing(t, b.ctx, n3, gw)

	b.del(c, a1)
	comments, _ = spoofRules(t, b.host)
	if !slices.Equal(comments, []string{spoofTag("bopt-spoof", a2)}) {
		t.Errorf("after DEL of %s: rules %q, want only %q", a1.ContainerID, comments, spoofTag("bopt-spoof", a2))
	}
	b.del(c, a2)
	if comments, _ = spoofRules(t, b.host); len(comments) != 0 {
		t.Errorf("after DEL of both: rules %q, want none", comments)
	}
}

// setMAC changes a link's MAC by hand, the way a process in the container
// could: down, new address, up.
//
// Equivalent: ip -n $ns link set $name down address $mac up
func setMAC(t *testing.T, n *lab.NS, name, mac string) {
	t.Helper()
	hw, err := net.ParseMAC(mac)
	if err != nil {
		t.Fatal(err)
	}
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err == nil {
		err = h.LinkSetDown(l)
	}
	if err == nil {
		err = h.LinkSetHardwareAddr(l, hw)
	}
	if err == nil {
		err = h.LinkSetUp(l)
	}
	if err != nil {
		t.Fatalf("set MAC of %s in %s to %s: %v", name, n, mac, err)
	}
}

// disableContainerInterface: the interface is created and left down, with
// no address.
func TestDisableContainerInterface(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-down", `{"type":"bridge","bridge":"bopt-down","disableContainerInterface":true}`)
	n, a := b.container("c1")
	res := b.add(c, a)
	l, err := n.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Up {
		t.Error("container eth0 is up, want down")
	}
	if got := globalAddrs(t, n, "eth0"); len(got) != 0 {
		t.Errorf("container eth0 addresses %v, want none", got)
	}
	if len(res.IPs) != 0 {
		t.Errorf("result IPs %v, want none", res.IPs)
	}
	veth := hostVethOf(t, res)
	hv, err := b.host.LinkByName(veth)
	if err != nil {
		t.Fatal(err)
	}
	if br, err := b.host.LinkByName("bopt-down"); err != nil || hv.Master != br.Index {
		t.Errorf("host veth %s not a port of bopt-down (%v)", veth, err)
	}
}

func TestIPv6Only(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-v6", `{"type":"bridge","bridge":"bopt-v6","isGateway":true,"isDefaultGateway":true,
		"ipam":{"type":"host-local","subnet":"fd00:59::/64"}}`)
	n, a := b.container("c1")
	res := b.add(c, a)
	ps, err := lab.ResultAddrs(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || !ps[0].Addr().Is6() {
		t.Fatalf("result addresses %v, want one IPv6 address", ps)
	}
	if got := globalAddrs(t, n, "eth0"); !slices.Equal(got, ps) {
		t.Errorf("container eth0 addresses %v, want %v", got, ps)
	}
	gw := netip.MustParsePrefix("fd00:59::1/64")
	if got := globalAddrs(t, b.host, "bopt-v6"); !slices.Equal(got, []netip.Prefix{gw}) {
		t.Errorf("bridge addresses %v, want [%s]", got, gw)
	}
	rs, err := n.Routes()
	if err != nil {
		t.Fatal(err)
	}
	def := false
	for _, r := range rs {
		if r.Family == netlink.FAMILY_V4 {
			t.Errorf("container has IPv4 route %+v", r)
		}
		def = def || r.Dst.Bits() == 0 && r.Gw == gw.Addr()
	}
	if !def {
		t.Errorf("container routes %+v lack a default via %s", rs, gw.Addr())
	}
	mustPing(t, b.ctx, n, gw.Addr())
}

func TestDNSInResult(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-dns", `{"type":"bridge","bridge":"bopt-dns","isGateway":true,
		"dns":{"nameservers":["10.60.0.53","fd00:60::53"],"domain":"lab.test","search":["a.lab.test","b.lab.test"],"options":["ndots:2"]},
		"ipam":{"type":"host-local","subnet":"10.60.0.0/24"}}`)
	_, a := b.container("c1")
	res := b.add(c, a)
	want := types.DNS{Nameservers: []string{"10.60.0.53", "fd00:60::53"}, Domain: "lab.test",
		Search: []string{"a.lab.test", "b.lab.test"}, Options: []string{"ndots:2"}}
	got := res.DNS
	if !slices.Equal(got.Nameservers, want.Nameservers) || got.Domain != want.Domain ||
		!slices.Equal(got.Search, want.Search) || !slices.Equal(got.Options, want.Options) {
		t.Errorf("result DNS %+v, want %+v", got, want)
	}
}

// forceAddress: a bridge that already holds another address makes the ADD
// fail with code 103, leaving nothing of the attachment; with forceAddress
// the gateway replaces that address.
func TestForceAddress(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	const br = "bopt-force"
	old := netip.MustParsePrefix("10.99.0.1/24")
	gw := netip.MustParsePrefix("10.61.0.1/24")
	addBridge(t, b.host, br)
	if err := b.host.AddAddr(br, old); err != nil {
		t.Fatal(err)
	}
	plugin := `{"type":"bridge","bridge":"bopt-force","isGateway":true,"ipMasq":true,"forceAddress":%t,
		"ipam":{"type":"host-local","subnet":"10.61.0.0/24"}}`
	_, a := b.container("c1")

	_, err := b.run.Add(b.ctx, b.conflist("bopt-force", fmt.Sprintf(plugin, false)).List, a)
	wantCNIError(t, err, 103, br, old.String(), "forceAddress")
	b.assertNoAttachment("bopt-force", a.ContainerID)
	if got := globalAddrs(t, b.host, br); !slices.Equal(got, []netip.Prefix{old}) {
		t.Errorf("after the failed ADD, bridge addresses %v, want [%s] untouched", got, old)
	}

	b.add(b.conflist("bopt-force", fmt.Sprintf(plugin, true)), a)
	if got := globalAddrs(t, b.host, br); !slices.Equal(got, []netip.Prefix{gw}) {
		t.Errorf("with forceAddress, bridge addresses %v, want [%s] (old %s gone)", got, gw, old)
	}
}

// addBridge creates an empty bridge in n, as an operator might have.
//
// Equivalent: ip -n $ns link add $name type bridge; ip -n $ns link set $name up
func addBridge(t *testing.T, n *lab.NS, name string) {
	t.Helper()
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	if err := h.LinkAdd(br); err != nil {
		t.Fatalf("add bridge %s in %s: %v", name, n, err)
	}
	if err := h.LinkSetUp(br); err != nil {
		t.Fatalf("set %s up in %s: %v", name, n, err)
	}
}
