package main

// Root tests of the bridge plugin's answers to bad input and odd runtime
// requests, through the built binary: the CNI error code, a message naming
// the field and value, and nothing left in the host namespace afterwards.
// The lab (bed, newBed, TestMain) is in bridge_root_test.go; the checks and
// host-state readers both files use are at the end of this one.

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
)

// assertClean checks that the host namespace holds nothing berth creates:
// no link but lo (no bridge, no bth* veth), no berth-nat or berth-spoof
// table, no attachment record, no lease.
func (b *bed) assertClean() {
	b.t.Helper()
	links, err := b.host.Links()
	if err != nil {
		b.t.Fatal(err)
	}
	for _, l := range links {
		if l.Name != "lo" {
			b.t.Errorf("host link left: %s (%s)", l.Name, l.Type)
		}
	}
	dump := b.nft()
	for _, table := range []string{"berth-nat", "berth-spoof"} {
		if strings.Contains(dump, table) {
			b.t.Errorf("table %s left in the host:\n%s", table, dump)
		}
	}
	for _, f := range b.records() {
		b.t.Errorf("attachment record left: %s", f)
	}
	for _, f := range b.leases() {
		b.t.Errorf("lease left: %s", f)
	}
}

// Config errors, sent to the binary as a runtime would (libcni checks
// network names itself and cannot send malformed JSON). Every config asks
// for masquerade and macspoofchk, so that anything the ADD got as far as
// creating would show. $DATA and $IPAM become the test's directories.
func TestConfigErrors(t *testing.T) {
	t.Parallel()
	const rest = `"type":"bridge","bridge":"bopt-err","dataDir":"$DATA","isGateway":true,"ipMasq":true,"macspoofchk":true,
		"ipam":{"type":"host-local","dataDir":"$IPAM","subnet":"10.70.0.0/24"}`
	long := "n" + strings.Repeat("x", 128)
	for _, tc := range []struct {
		name  string
		conf  string
		code  uint
		names []string // the message must contain each
	}{
		// The JSON, the network name and cniVersion are checked by
		// pluginmain before the cni library's skel would answer them with
		// its own messages; malformed JSON has no key, so the message
		// gives where it breaks.
		{"malformed JSON", `{"cniVersion":"1.1.0","name":"bopt-err",` + rest + `,`, 6,
			[]string{"network config", "not valid JSON at line 2", `10.70.0.0/24"},`, "unexpected end of JSON input"}},
		{"missing name", `{"cniVersion":"1.1.0",` + rest + `}`, 7, []string{`name ""`, "required"}},
		{"name dotdot", `{"cniVersion":"1.1.0","name":"../x",` + rest + `}`, 7, []string{`name "../x"`}},
		{"name slash", `{"cniVersion":"1.1.0","name":"a/b",` + rest + `}`, 7, []string{`name "a/b"`, `'/'`}},
		{"name 129 bytes", `{"cniVersion":"1.1.0","name":"` + long + `",` + rest + `}`, 7, []string{`name "` + long + `"`, "128"}},
		{"bridge 16 bytes", `{"cniVersion":"1.1.0","name":"bopt-err",` + strings.Replace(rest, `"bopt-err"`, `"bopt-0123456789a"`, 1) + `}`,
			7, []string{"bridge", `"bopt-0123456789a"`, "15"}},
		{"cniVersion 9.9.9", `{"cniVersion":"9.9.9","name":"bopt-err",` + rest + `}`, 1,
			[]string{`cniVersion "9.9.9"`, "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"}},
		{"bad CIDR", `{"cniVersion":"1.1.0","name":"bopt-err",` + strings.Replace(rest, "10.70.0.0/24", "10.70.0.0/33", 1) + `}`,
			7, []string{"ipam.subnet", `"10.70.0.0/33"`}},
		{"hairpin with promisc", `{"cniVersion":"1.1.0","name":"bopt-err","hairpinMode":true,"promiscMode":true,` + rest + `}`,
			7, []string{"hairpinMode", "promiscMode"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := newBed(t)
			_, a := b.container("c1")
			conf := strings.NewReplacer("$DATA", b.dataDir, "$IPAM", b.ipamDir).Replace(tc.conf)
			err := b.execPlugin("ADD", []byte(conf), map[string]string{
				"CNI_CONTAINERID": a.ContainerID, "CNI_NETNS": a.NetNS, "CNI_IFNAME": a.IfName})
			wantCNIError(t, err, tc.code, tc.names...)
			b.assertClean()
		})
	}
}

// errConf is a valid config that asks for everything that leaves state:
// a bridge, masquerade, macspoofchk, a host-local lease.
const errConf = `{"type":"bridge","bridge":"bopt-env","isGateway":true,"ipMasq":true,"macspoofchk":true,
	"ipam":{"type":"host-local","subnet":"10.71.0.0/24"}}`

func TestNetnsMissing(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-env", errConf)
	gone := lab.NetnsDir + "/" + b.nsName("never")
	_, err := b.run.Add(b.ctx, c.List, lab.Attachment{ContainerID: b.id + "-c1", NetNS: gone, IfName: "eth0"})
	wantCNIError(t, err, 4, "CNI_NETNS", gone)
	b.assertClean()
}

// CNI_NETNS naming the namespace the plugin runs in (the host's) is
// refused: the plugin would otherwise configure the host as a container.
func TestNetnsIsHost(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-env", errConf)
	_, err := b.run.Add(b.ctx, c.List, lab.Attachment{ContainerID: b.id + "-c1", NetNS: b.host.Path, IfName: "eth0"})
	wantCNIError(t, err, 4, "CNI_NETNS", b.host.Path)
	b.assertClean()
}

// An interface eth0 already in the container (a veth here: this kernel has
// no dummy driver) fails the ADD, and the container's eth0 is untouched.
func TestIfNameTaken(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-env", errConf)
	n, a := b.container("c1")
	if err := lab.Veth(lab.VethEnd{NS: n, Name: "eth0"}, lab.VethEnd{NS: n, Name: "peer0"}); err != nil {
		t.Fatal(err)
	}
	before, err := n.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	beforeAddrs := globalAddrs(t, n, "eth0")
	_, err = b.run.Add(b.ctx, c.List, a)
	wantCNIError(t, err, 4, "CNI_IFNAME", `"eth0"`)
	b.assertClean()
	after, err := n.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	// The kernel adds the IPv6 link-local address on its own, whenever
	// DAD lets it; only addresses the plugin could have set count.
	afterAddrs := globalAddrs(t, n, "eth0")
	if after.Index != before.Index || after.MAC != before.MAC || !slices.Equal(afterAddrs, beforeAddrs) {
		t.Errorf("container eth0 changed: before %+v %v, after %+v %v", before, beforeAddrs, after, afterAddrs)
	}
}

// A second ADD of an attachment that is there (the spec forbids it; a
// confused runtime sends it) fails with CNI_IFNAME and leaves the first
// attachment whole: CHECK still passes and its lease, record and
// masquerade survive the failed ADD's undo. DEL then leaves no trace of it.
func TestRepeatedAddKeepsFirst(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-env", errConf)
	n, a := b.container("c1")
	first := b.add(c, a)
	_, err := b.run.Add(b.ctx, c.List, a)
	wantCNIError(t, err, 4, "CNI_IFNAME", `"eth0"`)
	if err := b.run.Check(b.ctx, c.List, a); err != nil {
		t.Errorf("CHECK after the refused repeat: %v", err)
	}
	if got, want := globalAddrs(t, n, "eth0"), []netip.Prefix{resultAddr(t, first, 4)}; !slices.Equal(got, want) {
		t.Errorf("container eth0 addresses %v after the refused repeat, want %v", got, want)
	}
	if lines := lab.LinesContaining(b.nft(), a.ContainerID); len(lines) == 0 {
		t.Errorf("after the refused repeat: no masquerade element for %s", a.ContainerID)
	}
	b.del(c, a)
	b.assertNoAttachment("bopt-env", a.ContainerID)
}

// vlan needs bridge VLAN filtering; on a kernel without it the ADD fails
// with berth's code 100 naming the feature, and the bridge it tried to
// create is not left behind. Where the kernel has it, the VLAN tests
// (vlan_root_test.go, run in the VM layer here) cover the option instead.
func TestVlanNeedsFiltering(t *testing.T) {
	t.Parallel()
	if lab.HasKernel(t, lab.KernelVLANFiltering) {
		t.Skip("this kernel has bridge VLAN filtering: TestVlanGateway and the other VLAN tests cover vlan here")
	}
	b := newBed(t)
	c := b.conflist("bopt-vlan", `{"type":"bridge","bridge":"bopt-vlan","isGateway":true,"ipMasq":true,"vlan":100,
		"ipam":{"type":"host-local","subnet":"10.72.0.0/24"}}`)
	_, a := b.container("c1")
	_, err := b.run.Add(b.ctx, c.List, a)
	wantCNIError(t, err, 100, "VLAN filtering")
	b.assertClean()
}

func TestDelTwice(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-env", errConf)
	_, a := b.container("c1")
	b.add(c, a)
	if lines := lab.LinesContaining(b.nft(), a.ContainerID); len(lines) == 0 {
		t.Errorf("after ADD: no masquerade element for %s", a.ContainerID)
	}
	for i := 1; i <= 2; i++ {
		if err := b.run.Del(b.ctx, c.List, a); err != nil {
			t.Fatalf("DEL #%d: %v", i, err)
		}
	}
	b.assertNoAttachment("bopt-env", a.ContainerID)
	if rules, _ := spoofRules(t, b.host); len(rules) != 0 {
		t.Errorf("macspoofchk rules left: %q", rules)
	}
}

// A DEL of an attachment that was never added succeeds and creates
// nothing.
func TestDelNeverAdded(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-env", errConf)
	_, a := b.container("c1")
	if err := b.run.Del(b.ctx, c.List, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	b.assertClean()
}

// A DEL whose netns is already gone (path left dangling, or empty, as
// nerdctl and `ctr run --cni` send it) succeeds and still removes the
// attachment's lease, record, masquerade and macspoofchk state.
func TestDelNetnsGone(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	c := b.conflist("bopt-env", errConf)
	n1, a1 := b.container("c1")
	n2, a2 := b.container("c2")
	b.add(c, a1)
	b.add(c, a2)
	for _, n := range []*lab.NS{n1, n2} {
		if err := n.Delete(); err != nil {
			t.Fatal(err)
		}
	}
	a2.NetNS = ""
	for _, a := range []lab.Attachment{a1, a2} {
		if err := b.run.Del(b.ctx, c.List, a); err != nil {
			t.Errorf("DEL %s with netns %q: %v", a.ContainerID, a.NetNS, err)
		}
		b.assertNoAttachment("bopt-env", a.ContainerID)
	}
	if rules, _ := spoofRules(t, b.host); len(rules) != 0 {
		t.Errorf("macspoofchk rules left: %q", rules)
	}
	if dump := b.nft(); strings.Contains(dump, "berth-nat") {
		t.Errorf("table berth-nat left after the last DEL:\n%s", dump)
	}
}

func TestStatus(t *testing.T) {
	t.Parallel()
	b := newBed(t)
	ok := b.conflist("bopt-status", `{"type":"bridge","bridge":"bopt-status","isGateway":true,"ipMasq":true,
		"ipam":{"type":"host-local","subnet":"10.73.0.0/24"}}`)
	if err := b.run.Status(b.ctx, ok.List); err != nil {
		t.Errorf("STATUS of a valid config: %v", err)
	}
	missing := b.conflist("bopt-status", `{"type":"bridge","bridge":"bopt-status","isGateway":true,
		"ipam":{"type":"bopt-no-such-ipam","subnet":"10.73.0.0/24"}}`)
	err := b.run.Status(b.ctx, missing.List)
	wantCNIError(t, err, 50, "bopt-no-such-ipam")
}

// wantCNIError checks that err carries a CNI error with code and that its
// text names each of names.
func wantCNIError(t *testing.T, err error, code uint, names ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("got success, want CNI error code %d", code)
		return
	}
	var te *types.Error
	if !errors.As(err, &te) {
		t.Errorf("error %v (%T) is not a CNI error, want code %d", err, err, code)
		return
	}
	t.Logf("CNI error %d: %s", te.Code, te.Error())
	if te.Code != code {
		t.Errorf("CNI error code %d, want %d: %s", te.Code, code, te.Error())
	}
	for _, s := range names {
		if !strings.Contains(te.Error(), s) {
			t.Errorf("error %q does not name %q", te.Error(), s)
		}
	}
}

// assertNoAttachment checks that nothing of containerID's attachment to
// network is left in the host: no host veth tagged with it, no attachment
// record or lease naming it, no netfilter element or rule commented with
// it. Other attachments may remain.
func (b *bed) assertNoAttachment(network, containerID string) {
	b.t.Helper()
	veths, err := b.host.HostVethsOf(network, containerID)
	if err != nil {
		b.t.Fatal(err)
	}
	for _, v := range veths {
		b.t.Errorf("host veth left: %+v", v)
	}
	for _, f := range b.records() {
		rec, rerr := os.ReadFile(f)
		if rerr != nil {
			b.t.Fatal(rerr)
		}
		if strings.Contains(string(rec), fmt.Sprintf("%q", containerID)) {
			b.t.Errorf("attachment record left: %s: %s", f, rec)
		}
	}
	leases, err := lab.LeaseFiles(b.ipamDir, network, containerID)
	if err != nil {
		b.t.Fatal(err)
	}
	for _, f := range leases {
		b.t.Errorf("lease left: %s", f)
	}
	dump := b.nft()
	if lines := lab.LinesContaining(dump, containerID); len(lines) > 0 {
		b.t.Errorf("netfilter state of %s left: %q", containerID, lines)
	}
}

// records lists the attachment record files under the bridge's dataDir.
func (b *bed) records() []string {
	b.t.Helper()
	var out []string
	err := filepath.WalkDir(b.dataDir, func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// leases lists every file under host-local's dataDir named like an
// address (one per lease), whoever holds it.
func (b *bed) leases() []string {
	b.t.Helper()
	var out []string
	err := filepath.WalkDir(b.ipamDir, func(p string, d os.DirEntry, err error) error {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if _, perr := netip.ParseAddr(d.Name()); perr == nil && !d.IsDir() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		b.t.Fatal(err)
	}
	return out
}

// nft renders the host namespace's nftables state (in-process listing).
func (b *bed) nft() string {
	b.t.Helper()
	s, err := b.host.NftDumpNetlink()
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

// execPlugin runs the built plugin binary bridge directly in the host
// namespace, the way a runtime's exec would, with stdin as given (libcni
// would refuse to send malformed JSON or an invalid network name, and
// these tests are about what berth itself says). It returns the CNI error
// the plugin printed, or nil on success.
func (b *bed) execPlugin(command string, stdin []byte, env map[string]string) error {
	b.t.Helper()
	cmd := exec.CommandContext(b.ctx, filepath.Join(bins.Dir, "bridge"))
	cmd.Env = []string{"CNI_COMMAND=" + command, "CNI_PATH=" + bins.Dir, "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdin = strings.NewReader(string(stdin))
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := b.host.Run(cmd)
	if stderr.Len() > 0 {
		b.t.Logf("bridge %s stderr: %s", command, stderr.String())
	}
	if err == nil {
		return nil
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		b.t.Fatalf("run bridge %s: %v", command, err)
	}
	te := &types.Error{}
	if jerr := json.Unmarshal([]byte(stdout.String()), te); jerr != nil {
		b.t.Fatalf("bridge %s exited %v, stdout %q is not a CNI error: %v", command, err, stdout.String(), jerr)
	}
	return te
}

// nlLink reads a link through netlink in namespace n.
func nlLink(t *testing.T, n *lab.NS, name string) netlink.Link {
	t.Helper()
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s in %s: %v", name, n, err)
	}
	return l
}

// nlAddrs lists the addresses of link name in n (family netlink.FAMILY_*),
// flags included.
func nlAddrs(t *testing.T, n *lab.NS, name string, family int) []netlink.Addr {
	t.Helper()
	h, err := n.Handle()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatalf("link %s in %s: %v", name, n, err)
	}
	as, err := h.AddrList(l, family)
	if err != nil {
		t.Fatalf("addresses of %s in %s: %v", name, n, err)
	}
	return as
}

// globalAddrs returns the addresses of link name in n, link-local ones
// left out.
func globalAddrs(t *testing.T, n *lab.NS, name string) []netip.Prefix {
	t.Helper()
	var out []netip.Prefix
	for _, a := range nlAddrs(t, n, name, netlink.FAMILY_ALL) {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap().IsLinkLocalUnicast() {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out
}

// spoofRules lists the comments of the rules in chain prerouting of
// table bridge berth-spoof in the host namespace, read with google/nftables
// over netlink; exists is false when the table is absent.
//
// Equivalent: ip netns exec $host nft list chain bridge berth-spoof prerouting
func spoofRules(t *testing.T, host *lab.NS) (comments []string, exists bool) {
	t.Helper()
	fd, err := netns.GetFromPath(host.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer fd.Close()
	var c *nftables.Conn
	err = host.Do(func() error {
		var cerr error
		c, cerr = nftables.New(nftables.WithNetNSFd(int(fd)), nftables.AsLasting())
		return cerr
	})
	if err != nil {
		t.Fatalf("nftables in %s: %v", host, err)
	}
	defer c.CloseLasting()
	tables, err := c.ListTablesOfFamily(nftables.TableFamilyBridge)
	if err != nil {
		t.Fatalf("list bridge tables in %s: %v", host, err)
	}
	for _, tb := range tables {
		if tb.Name != "berth-spoof" {
			continue
		}
		exists = true
		rules, err := c.GetRules(tb, &nftables.Chain{Name: "prerouting", Table: tb})
		if err != nil && !errors.Is(err, unix.ENOENT) {
			t.Fatalf("list rules of bridge berth-spoof in %s: %v", host, err)
		}
		for _, r := range rules {
			s, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			comments = append(comments, s)
		}
	}
	return comments, exists
}

// spoofTag is the comment berth puts on an attachment's macspoofchk rule.
func spoofTag(network string, a lab.Attachment) string {
	return fmt.Sprintf("berth net=%s id=%s if=%s", network, a.ContainerID, a.IfName)
}
