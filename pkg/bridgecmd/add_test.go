package bridgecmd

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/state"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

// bed is one fake host with its data and lock dirs, and the text of what
// a test did to it.
type bed struct {
	t       *testing.T
	h       *fakeHost
	p       Plugin
	dataDir string
	out     strings.Builder
}

func newBed(t *testing.T) *bed {
	t.Helper()
	t.Parallel()
	h := newFakeHost()
	return &bed{t: t, h: h, p: h.plugin(t.TempDir()), dataDir: t.TempDir()}
}

// conf is conflist/bridge.conflist's bridge plugin, with extra keys.
func (b *bed) conf(extra string) []byte {
	return []byte(`{"cniVersion":"1.1.0","name":"berth","type":"bridge","bridge":"berth0",
		"isGateway":true,"isDefaultGateway":true,"ipMasq":true,"hairpinMode":true,
		"ipam":{"type":"host-local","ranges":[[{"subnet":"10.88.0.0/16"}],[{"subnet":"fd00:88::/64"}]]},
		"dataDir":"` + b.dataDir + `"` + extra + `}`)
}

func args(id, netns string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, Netns: netns, IfName: "eth0", StdinData: conf, Path: "/opt/cni/bin"}
}

// cmd runs one command and writes it, its answer and the transcripts it
// added to the bed's text.
func (b *bed) cmd(name string, a *skel.CmdArgs) error {
	_, err := b.run(name, a)
	return err
}

// run is cmd, returning the command's output too.
func (b *bed) run(name string, a *skel.CmdArgs) (string, error) {
	b.t.Helper()
	marks := [3]int{len(b.h.kernel.lines), len(b.h.masq.lines), len(b.h.ipam.lines)}
	var out bytes.Buffer
	var err error
	ctx := context.Background()
	switch name {
	case "ADD":
		err = b.p.Add(ctx, a, &out)
	case "DEL":
		err = b.p.Del(ctx, a)
	case "CHECK":
		err = b.p.Check(ctx, a)
	case "GC":
		err = b.p.GC(ctx, a)
	}
	fmt.Fprintf(&b.out, "== %s %s\n", name, a.ContainerID)
	for i, tr := range []*transcript{&b.h.kernel, &b.h.masq, &b.h.ipam} {
		lines := slices.Clone(tr.lines[marks[i]:])
		if name == "DEL" {
			sort.Strings(lines) // DEL's steps run at once: their order is not fixed
		}
		for _, l := range lines {
			fmt.Fprintf(&b.out, "%s%s\n", []string{"", "masq: ", "ipam: "}[i], l)
		}
	}
	if err != nil {
		fmt.Fprintf(&b.out, "-> error %d: %v\n", cnierr.Code(err), err)
	} else if out.Len() > 0 {
		fmt.Fprintf(&b.out, "-> %s\n", strings.TrimSpace(out.String()))
	} else {
		fmt.Fprintf(&b.out, "-> ok\n")
	}
	return out.String(), err
}

func (b *bed) must(name string, a *skel.CmdArgs) {
	b.t.Helper()
	if err := b.cmd(name, a); err != nil {
		b.t.Fatalf("%s %s: %v\n%s", name, a.ContainerID, err, b.out.String())
	}
}

// state adds what the host holds, and the attachment records, to the text.
func (b *bed) state() {
	b.t.Helper()
	fmt.Fprintf(&b.out, "== state\n%s\n", b.h.state())
	recs, err := state.Open(b.dataDir, "berth").List()
	if err != nil {
		b.t.Fatal(err)
	}
	var lines []string
	for _, r := range recs {
		lines = append(lines, fmt.Sprintf("record %s/%s complete %v ips %v masq %s", r.ContainerID, r.IfName, r.Complete, r.IPs, r.MasqBackend))
	}
	sort.Strings(lines)
	for _, l := range lines {
		fmt.Fprintln(&b.out, l)
	}
}

// golden compares the bed's text with testdata/<test name>.golden.
func (b *bed) golden() {
	b.t.Helper()
	path := filepath.Join("testdata", strings.ReplaceAll(b.t.Name(), "/", "_")+".golden")
	got := b.out.String()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			b.t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		b.t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		b.t.Errorf("%s differs (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// The first ADD on a host makes the bridge, the veth, the addresses, the
// gateway and the masquerade; a second container reuses the bridge; CHECK
// passes; DEL removes each attachment whole, and a second DEL succeeds.
func TestAddDelTranscript(t *testing.T) {
	b := newBed(t)
	b.h.container("/run/netns/c1")
	b.h.container("/run/netns/c2")
	b.must("ADD", args("c1", "/run/netns/c1", b.conf("")))
	b.must("ADD", args("c2", "/run/netns/c2", b.conf("")))
	b.state()
	b.must("DEL", args("c1", "/run/netns/c1", b.conf("")))
	b.must("DEL", args("c1", "/run/netns/c1", b.conf("")))
	b.must("DEL", args("c2", "", b.conf(""))) // the runtime lost the netns
	b.state()
	b.golden()
	if b.h.closed != 5 {
		t.Errorf("kernel closed %d times, want once per command (5)", b.h.closed)
	}
}

// A failed ADD undoes every step it made, newest first, and leaves
// nothing: neither the lease nor the record nor the bridge it created.
func TestAddRollback(t *testing.T) {
	for _, step := range []string{"AddVeth", "Lease", "Configure", "EnsureGatewayAddr", "MasqAdd"} {
		t.Run(step, func(t *testing.T) {
			b := newBed(t)
			b.h.container("/run/netns/c1")
			b.h.fail[step] = errors.New("injected")
			if err := b.cmd("ADD", args("c1", "/run/netns/c1", b.conf(""))); err == nil {
				t.Fatal("ADD succeeded")
			}
			b.state()
			b.golden()
			if s := b.h.state(); s != "" {
				t.Errorf("left after the failed ADD:\n%s", s)
			}
		})
	}
}

// When the rollback cannot release the lease, the record stays: DEL, GC
// and the sweep find it and release the lease later ("no record, no
// lease" holds for the next ADD).
func TestAddRollbackKeepsRecordOfUnreleasedLease(t *testing.T) {
	b := newBed(t)
	b.h.container("/run/netns/c1")
	b.h.fail["Configure"] = errors.New("injected")
	b.h.fail["Release"] = errors.New("store locked")
	b.cmd("ADD", args("c1", "/run/netns/c1", b.conf("")))
	delete(b.h.fail, "Release")
	delete(b.h.fail, "Configure")
	b.state()
	b.must("DEL", args("c1", "/run/netns/c1", b.conf("")))
	b.state()
	b.golden()
}

// A repeated ADD of an attachment whose interface exists is refused before
// it touches anything, and the first attachment survives whole.
func TestRepeatedAddRefused(t *testing.T) {
	b := newBed(t)
	b.h.container("/run/netns/c1")
	res, err := b.run("ADD", args("c1", "/run/netns/c1", b.conf("")))
	if err != nil {
		t.Fatal(err)
	}
	if err := b.cmd("ADD", args("c1", "/run/netns/c1", b.conf(""))); cnierr.Code(err) != 4 {
		t.Errorf("repeated ADD: code %d, want 4", cnierr.Code(err))
	}
	b.state()
	b.must("CHECK", args("c1", "/run/netns/c1", b.conf(`,"prevResult":`+res)))
	b.golden()
}

// Layer 2 only: no IPAM, no addresses, no masquerade; the interface up.
func TestAddNoIPAM(t *testing.T) {
	b := newBed(t)
	b.h.container("/run/netns/c1")
	conf := []byte(`{"cniVersion":"1.1.0","name":"berth","type":"bridge","bridge":"l2br","dataDir":"` + b.dataDir + `","macspoofchk":true}`)
	b.must("ADD", args("c1", "/run/netns/c1", conf))
	b.state()
	b.must("DEL", args("c1", "/run/netns/c1", conf))
	b.state()
	b.golden()
}

// The VLAN gateway interface holds the gateway addresses and is listed in
// the result.
func TestAddVlanGateway(t *testing.T) {
	b := newBed(t)
	b.h.container("/run/netns/c1")
	b.must("ADD", args("c1", "/run/netns/c1", b.conf(`,"vlan":100`)))
	b.state()
	b.golden()
}

// GC removes the attachments that are not valid, found from records, host
// veths and masquerade entries: c4 left only a host veth (its record was
// lost), c5 only a masquerade entry.
func TestGC(t *testing.T) {
	b := newBed(t)
	for _, id := range []string{"c1", "c2", "c3"} {
		b.h.container("/run/netns/" + id)
		b.must("ADD", args(id, "/run/netns/"+id, b.conf("")))
	}
	c4 := owner.Owner{Network: "berth", ContainerID: "c4", IfName: "eth0"}
	b.h.veths[c4.HostVeth()] = link.HostVeth{Name: c4.HostVeth(), Owner: c4, Master: 11}
	c5 := owner.Owner{Network: "berth", ContainerID: "c5", IfName: "eth0"}
	b.h.masqs[c5] = []netip.Prefix{netip.MustParsePrefix("10.88.0.9/16")}
	valid := `,"cni.dev/valid-attachments":[{"containerID":"c2","ifname":"eth0"}]`
	b.must("GC", args("", "", b.conf(valid)))
	b.state()
	b.golden()
}

// An ADD that has no container namespace fails with code 4 and makes
// nothing.
func TestAddNetnsGone(t *testing.T) {
	b := newBed(t)
	err := b.cmd("ADD", args("c1", "/run/netns/none", b.conf("")))
	if cnierr.Code(err) != 4 || !strings.Contains(err.Error(), "no such network namespace") {
		t.Errorf("code %d: %v", cnierr.Code(err), err)
	}
	b.state()
	b.golden()
}
