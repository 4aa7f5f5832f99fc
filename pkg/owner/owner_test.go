package owner

import (
	"strings"
	"testing"
)

func TestHostVeth(t *testing.T) {
	t.Parallel()
	a := Owner{"net", "c1", "eth0"}.HostVeth()
	if len(a) != 15 || !strings.HasPrefix(a, HostVethPrefix) {
		t.Fatalf("name %q: want bth + 12 hex = 15 bytes", a)
	}
	// The scheme is an API: this value must never change.
	if a != "bth26026bd18b7c" {
		t.Fatalf("HostVethName changed: %q", a)
	}
	for _, o := range []Owner{{"net", "c1", "eth1"}, {"net", "c2", "eth0"}, {"net2", "c1", "eth0"}, {"ne", "tc1", "eth0"}} {
		if o.HostVeth() == a {
			t.Fatalf("%+v collides with net/c1/eth0", o)
		}
	}
}

func TestAliasRoundTrip(t *testing.T) {
	t.Parallel()
	o := Owner{"my-net.1", "0123abcdef", "eth0"}
	got, ok := ParseAlias(o.Alias())
	if !ok || got != o {
		t.Fatalf("ParseAlias(Alias(%+v)) = %+v, %v", o, got, ok)
	}
	long := Owner{strings.Repeat("n", 128), strings.Repeat("c", 200), "eth0"}
	if long.Alias() != "" {
		t.Fatal("over-long alias must be left empty, not truncated")
	}
	for _, s := range []string{"", "berth:", "berth:a/b", "berth:a//c", "berth:a/b/c/d", "other:a/b/c"} {
		if _, ok := ParseAlias(s); ok {
			t.Errorf("ParseAlias(%q) accepted", s)
		}
	}
}

// FuzzParseAlias: aliases are read back from the kernel, where anyone with
// CAP_NET_ADMIN can write them.
func FuzzParseAlias(f *testing.F) {
	f.Add("berth:net/c1/eth0")
	f.Add("berth:a/b/c/d")
	f.Fuzz(func(t *testing.T, s string) {
		o, ok := ParseAlias(s)
		if !ok {
			return
		}
		if o.Network == "" || o.ContainerID == "" || o.IfName == "" || strings.Contains(o.Network+o.ContainerID+o.IfName, "/") {
			t.Fatalf("ParseAlias(%q) = %+v", s, o)
		}
		if o.Alias() != s && len(s) <= MaxAlias {
			t.Fatalf("round trip: %q -> %+v -> %q", s, o, o.Alias())
		}
	})
}

func TestDerivedNames(t *testing.T) {
	t.Parallel()
	o := Owner{"net", "c1", "eth0"}
	// The schemes are an API: these values must never change.
	if got := o.TempLink(); got != "bmt26026bd18b7c" {
		t.Fatalf("TempLink = %q", got)
	}
	if got := o.Hash(24); got != "26026bd18b7c"+got[12:] || len(got) != 24 {
		t.Fatalf("Hash(24) = %q: must extend Hash(12)", got)
	}
	if got := o.String(); got != "net/c1/eth0" {
		t.Fatalf("String = %q", got)
	}
}
