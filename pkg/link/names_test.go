package link

import (
	"strings"
	"testing"
)

func TestHostVethName(t *testing.T) {
	t.Parallel()
	a := HostVethName(Owner{"net", "c1", "eth0"})
	if len(a) != 15 || !strings.HasPrefix(a, HostVethPrefix) {
		t.Fatalf("name %q: want bth + 12 hex = 15 bytes", a)
	}
	// The scheme is an API: this value must never change.
	if a != "bth26026bd18b7c" {
		t.Fatalf("HostVethName changed: %q", a)
	}
	for _, o := range []Owner{{"net", "c1", "eth1"}, {"net", "c2", "eth0"}, {"net2", "c1", "eth0"}, {"ne", "tc1", "eth0"}} {
		if HostVethName(o) == a {
			t.Fatalf("%+v collides with net/c1/eth0", o)
		}
	}
}

func TestAliasRoundTrip(t *testing.T) {
	t.Parallel()
	o := Owner{"my-net.1", "0123abcdef", "eth0"}
	got, ok := ParseAlias(Alias(o))
	if !ok || got != o {
		t.Fatalf("ParseAlias(Alias(%+v)) = %+v, %v", o, got, ok)
	}
	long := Owner{strings.Repeat("n", 128), strings.Repeat("c", 200), "eth0"}
	if Alias(long) != "" {
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
		if Alias(o) != s && len(s) <= maxAlias {
			t.Fatalf("round trip: %q -> %+v -> %q", s, o, Alias(o))
		}
	})
}

func TestVlanGatewayNames(t *testing.T) {
	if got := VlanGatewayName("cni0", 100); got != "cni0.100" {
		t.Errorf("VlanGatewayName = %q", got)
	}
	p1, p2 := VlanGatewayPortName("cni0", 100), VlanGatewayPortName("cni0", 101)
	if len(p1) != 13 || p1[:3] != VlanGatewayPortPrefix || p1 == p2 || p1 != VlanGatewayPortName("cni0", 100) {
		t.Errorf("VlanGatewayPortName: %q, %q: want 13 bytes, %q first, distinct per vlan, stable", p1, p2, VlanGatewayPortPrefix)
	}
	if !IsVlanGatewayPort(vlanGatewayAlias+"cni0/100") || IsVlanGatewayPort(Alias(Owner{"net", "id", "eth0"})) {
		t.Error("IsVlanGatewayPort confuses gateway ports and container veths")
	}
}
