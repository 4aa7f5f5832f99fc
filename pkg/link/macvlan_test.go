package link

import (
	"testing"
)

func TestShimName(t *testing.T) {
	t.Parallel()
	a := ShimName("eth0")
	if a != "bshim9c32a8c7e5" {
		t.Fatalf("ShimName changed: %q (an API: never change it)", a)
	}
	if len(ShimName("0123456789abcde")) != 15 || ShimName("eth1") == a {
		t.Fatal("shim names: want 15 bytes, one per master")
	}
}

func TestVlanParent(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		parent string
		vid    int
		ok     bool
	}{
		{"eth0.50", "eth0", 50, true},
		{"enp3s0.1", "enp3s0", 1, true},
		{"bond0.4094", "bond0", 4094, true},
		{"a.b.7", "a.b", 7, true},
		{"eth0", "", 0, false},
		{"eth0.", "", 0, false},
		{".50", "", 0, false},
		{"eth0.0", "", 0, false},
		{"eth0.4095", "", 0, false},
		{"eth0.+5", "", 0, false},
		{"eth0.-5", "", 0, false},
		{"eth0.5a", "", 0, false},
		{"eth0.00050", "", 0, false},
	} {
		p, v, ok := VlanParent(tc.name)
		if p != tc.parent || v != tc.vid || ok != tc.ok {
			t.Errorf("VlanParent(%q) = %q, %d, %v; want %q, %d, %v", tc.name, p, v, ok, tc.parent, tc.vid, tc.ok)
		}
	}
}
