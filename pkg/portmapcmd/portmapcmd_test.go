package portmapcmd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// The tests without root pass no namespace (nil): what they run must not
// reach the kernel, and would fail loudly if it did.

// prevEth0 is what bridge returns for a container with 10.88.0.5/16 on eth0.
const prevEth0 = `{"cniVersion":"1.1.0","interfaces":[{"name":"bth0"},{"name":"eth0","sandbox":"/var/run/netns/c"}],"ips":[{"address":"10.88.0.5/16","interface":1,"gateway":"10.88.0.1"}]}`

// stdin is a portmap config of network n1 keeping its reservations in
// dataDir, with the further top-level members kv.
func stdin(dataDir string, kv ...string) []byte {
	members := append([]string{`"cniVersion":"1.1.0"`, `"name":"n1"`, `"type":"portmap"`, `"dataDir":"` + dataDir + `"`}, kv...)
	return []byte("{" + strings.Join(members, ",") + "}")
}

func prev(result string) string { return `"prevResult":` + result }

func mappings(ms ...string) string {
	return `"runtimeConfig":{"portMappings":[` + strings.Join(ms, ",") + `]}`
}

func cmdArgs(id string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, Netns: "/var/run/netns/" + id, IfName: "eth0", StdinData: conf}
}

// ADD refuses what it cannot map, with the code and the key to fix, before
// it touches the host or the reservations.
func TestAddRefuses(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "portmap")
	m := mappings(`{"hostPort":8080,"containerPort":80,"protocol":"tcp"}`)
	nftables := `"backend":"nftables"`
	for _, tc := range []struct {
		name string
		args *skel.CmdArgs
		code uint
		want string
	}{
		{"not json", cmdArgs("c1", []byte(`{"name":`)), 6, "decode"},
		{"no prevResult", cmdArgs("c1", stdin(dir, m)), 7, "chained plugin"},
		{"after null", cmdArgs("c1", stdin(dir, m, prev(`{"cniVersion":"1.1.0","interfaces":[{"name":"lo","sandbox":"/x"}],"ips":[{"address":"127.0.0.1/8","interface":0}]}`))), 7, "loopback only"},
		{"container ID", cmdArgs("c/1", stdin(dir, m, prev(prevEth0))), 4, "CNI_CONTAINERID"},
		{"interface name", &skel.CmdArgs{ContainerID: "c1", IfName: "eth 0", StdinData: stdin(dir, m, prev(prevEth0))}, 4, "CNI_IFNAME"},
		{"no address of the hostIP's family", cmdArgs("c1", stdin(dir, nftables, prev(prevEth0),
			mappings(`{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"fd00::1"}`))), 7, "runtimeConfig.portMappings[0].hostIP"},
		{"no address on the interface", cmdArgs("c1", stdin(dir, nftables, m,
			prev(`{"cniVersion":"1.1.0","interfaces":[{"name":"eth1","sandbox":"/x"}],"ips":[{"address":"10.88.0.5/16","interface":0}]}`))), 7, "no address on interface eth0"},
	} {
		var out bytes.Buffer
		err := add(context.Background(), nil, tc.args, &out)
		if err == nil || cnierr.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: ADD = %v (code %d), want code %d naming %q", tc.name, err, cnierr.Code(err), tc.code, tc.want)
		}
		if out.Len() > 0 {
			t.Errorf("%s: a refused ADD wrote %q", tc.name, out.String())
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a refused ADD made the reservations directory: %v", err)
	}
}

// An ADD with no mapping passes the prevResult on, in the config's
// version, and does nothing else: no namespace, no reservation, no
// netfilter work.
func TestAddWithoutMappings(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "portmap")
	prev04 := strings.ReplaceAll(strings.Replace(prevEth0, `"address"`, `"version":"4","address"`, 1), `"1.1.0"`, `"0.4.0"`)
	conf := []byte(strings.ReplaceAll(string(stdin(dir, prev(prev04))), `"1.1.0"`, `"0.4.0"`))
	var out bytes.Buffer
	if err := add(context.Background(), nil, cmdArgs("c1", conf), &out); err != nil {
		t.Fatal(err)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Version string `json:"version"`
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.CNIVersion != "0.4.0" || len(res.IPs) != 1 || res.IPs[0].Address != "10.88.0.5/16" || res.IPs[0].Version != "4" {
		t.Errorf("result %s (%v), want the prevResult as 0.4.0", out.String(), err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("an ADD without mappings made the reservations directory: %v", err)
	}
}

// DEL of what was never added succeeds, twice; CHECK says what is not
// held; GC of an empty host succeeds. None reaches the kernel.
func TestNothingHeld(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	m := mappings(`{"hostPort":8080,"containerPort":80,"protocol":"tcp"}`)
	for i := range 2 {
		if err := del(ctx, nil, cmdArgs("c1", stdin(dir, m))); err != nil {
			t.Errorf("DEL #%d: %v", i+1, err)
		}
	}
	err := check(ctx, nil, cmdArgs("c1", stdin(dir, m, prev(prevEth0))))
	if err == nil || !strings.Contains(err.Error(), "container c1 (interface eth0) holds no host port; want tcp 0.0.0.0:8080 -> 80") {
		t.Errorf("CHECK of nothing held = %v", err)
	}
	if err := check(ctx, nil, cmdArgs("c1", stdin(dir, prev(prevEth0)))); err != nil {
		t.Errorf("CHECK without mappings = %v", err)
	}
	if err := check(ctx, nil, cmdArgs("c1", stdin(dir, m))); cnierr.Code(err) != 7 {
		t.Errorf("CHECK without prevResult = %v, want code 7", err)
	}
	if err := gc(ctx, nil, &skel.CmdArgs{StdinData: stdin(dir, `"cni.dev/valid-attachments":[]`)}); err != nil {
		t.Errorf("GC = %v", err)
	}
}

// STATUS answers 50 when the reservations cannot be locked.
func TestStatus(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	dir := t.TempDir()
	if err := status(ctx, nil, &skel.CmdArgs{StdinData: stdin(dir, `"backend":"nftables"`)}); err != nil {
		t.Errorf("STATUS = %v", err)
	}
	file := filepath.Join(dir, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := status(ctx, nil, &skel.CmdArgs{StdinData: stdin(file, `"backend":"nftables"`)}); cnierr.Code(err) != cnierr.CodeNotAvailable {
		t.Errorf("STATUS with a file for dataDir = %v (code %d), want code 50", err, cnierr.Code(err))
	}
}

// The container's addresses are the first of each family on the sandbox
// interface named CNI_IFNAME (or on no interface), never a link-local IPv6.
func TestContainerTargets(t *testing.T) {
	t.Parallel()
	var res current.Result
	if err := json.Unmarshal([]byte(`{"cniVersion":"1.1.0",
		"interfaces":[{"name":"bth0"},{"name":"eth0","sandbox":"/x"},{"name":"eth1","sandbox":"/x"}],
		"ips":[{"address":"10.99.0.5/24","interface":2},{"address":"10.88.0.5/16","interface":1},{"address":"10.88.0.6/16","interface":1},
			{"address":"fe80::5/64","interface":1},{"address":"fd00:88::5/64"},{"address":"10.77.0.5/16","interface":0}]}`), &res); err != nil {
		t.Fatal(err)
	}
	got := containerTargets(&res, "eth0")
	want := []netip.Prefix{netip.MustParsePrefix("10.88.0.5/16"), netip.MustParsePrefix("fd00:88::5/64")}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("containerTargets = %v, want %v", got, want)
	}
}
