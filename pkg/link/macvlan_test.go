package link

import (
	"testing"
)

func TestTempLinkName(t *testing.T) {
	t.Parallel()
	o := Owner{"net", "c1", "eth0"}
	// The scheme is an API (DEL looks for a link a crashed ADD left under
	// it): this value must never change.
	if got := TempLinkName(o); got != "bmt26026bd18b7c" {
		t.Fatalf("TempLinkName changed: %q", got)
	}
	if TempLinkName(Owner{"net", "c1", "eth1"}) == TempLinkName(o) {
		t.Fatal("temporary names of two attachments collide")
	}
}

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
