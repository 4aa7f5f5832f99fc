package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/owner"
)

func TestPorts(t *testing.T) {
	dir := t.TempDir()
	s := hostport.Open(dir)
	a := hostport.Attachment{
		Owner:   owner.Owner{Network: "web", ContainerID: "c1", IfName: "eth0"},
		Targets: []netip.Prefix{netip.MustParsePrefix("10.88.0.5/16"), netip.MustParsePrefix("fd00:88::5/64")},
		Mappings: []hostport.Mapping{
			{Key: hostport.Key{Proto: "tcp", Port: 8080}, ContainerPort: 80},
			{Key: hostport.Key{Proto: "udp", Addr: netip.MustParseAddr("10.0.0.1"), Port: 53}, ContainerPort: 5353},
		},
	}
	if err := s.Claim(a); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	if rc := run([]string{"ports", "-dir", dir}, &out, &errb); rc != 0 {
		t.Fatalf("rc %d: %s", rc, errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("table:\n%s", out.String())
	}
	for _, want := range [][]string{
		{"tcp", "*", "8080", "c1", "web", "eth0", "10.88.0.5:80,[fd00:88::5]:80"},
		{"udp", "10.0.0.1", "53", "c1", "web", "eth0", "10.88.0.5:5353"},
	} {
		found := false
		for _, l := range lines[1:] {
			if strings.Join(strings.Fields(l), " ") == strings.Join(want, " ") {
				found = true
			}
		}
		if !found {
			t.Errorf("no row %v in:\n%s", want, out.String())
		}
	}
	out.Reset()
	if rc := run([]string{"ports", "-dir", dir, "-json"}, &out, &errb); rc != 0 {
		t.Fatalf("rc %d: %s", rc, errb.String())
	}
	var rows []portRow
	if err := json.Unmarshal(out.Bytes(), &rows); err != nil || len(rows) != 2 || rows[0].HostPort != 8080 || rows[1].HostIP != "10.0.0.1" {
		t.Errorf("json %v %v:\n%s", rows, err, out.String())
	}
	out.Reset()
	if rc := run([]string{"ports", "-dir", t.TempDir(), "-json"}, &out, &errb); rc != 0 || strings.TrimSpace(out.String()) != "[]" {
		t.Errorf("empty store: rc %d, %q", rc, out.String())
	}
	if rc := run([]string{"nope"}, &out, &errb); rc != 2 {
		t.Errorf("unknown command: rc %d", rc)
	}
}
