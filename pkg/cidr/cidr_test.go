package cidr

import (
	"net"
	"net/netip"
	"testing"
)

func TestPrefix(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   *net.IPNet
		want string // "" when not ok
	}{
		{nil, ""},
		{&net.IPNet{IP: net.IPv4(10, 1, 2, 3).To4(), Mask: net.CIDRMask(24, 32)}, "10.1.2.3/24"},
		{&net.IPNet{IP: net.IPv4(10, 1, 2, 3), Mask: net.CIDRMask(24, 32)}, "10.1.2.3/24"},   // 16-byte IP, 4-byte mask
		{&net.IPNet{IP: net.IPv4(10, 1, 2, 3), Mask: net.CIDRMask(120, 128)}, "10.1.2.3/24"}, // mapped, 16-byte mask
		{&net.IPNet{IP: net.IPv4(10, 1, 2, 3), Mask: net.CIDRMask(64, 128)}, ""},             // mapped, mask shorter than the mapping
		{&net.IPNet{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(64, 128)}, "fd00::1/64"},
		{&net.IPNet{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(24, 32)}, ""}, // v6 with a v4 mask
		{&net.IPNet{IP: net.IPv4(10, 1, 2, 3).To4(), Mask: net.IPMask{255, 0, 255, 0}}, ""},
		{&net.IPNet{IP: []byte{1, 2, 3}, Mask: net.CIDRMask(24, 32)}, ""},
	} {
		got, ok := Prefix(c.in)
		if c.want == "" {
			if ok {
				t.Errorf("Prefix(%v) = %v, want not ok", c.in, got)
			}
			continue
		}
		if !ok || got.String() != c.want {
			t.Errorf("Prefix(%v) = %v, %v; want %s", c.in, got, ok, c.want)
		}
	}
}

func TestRoundTrip(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"10.1.2.3/24", "0.0.0.0/0", "fd00::5/64", "::/0", "192.0.2.1/32"} {
		p := netip.MustParsePrefix(s)
		got, ok := Prefix(IPNet(p))
		if !ok || got != p {
			t.Errorf("Prefix(IPNet(%s)) = %v, %v", s, got, ok)
		}
	}
}

func TestLast(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{"10.88.0.0/16": "10.88.255.255", "10.88.1.7/32": "10.88.1.7", "fd00::/120": "fd00::ff", "0.0.0.0/0": "255.255.255.255"} {
		if got := Last(netip.MustParsePrefix(in)); got.String() != want {
			t.Errorf("Last(%s) = %s, want %s", in, got, want)
		}
	}
}

func TestIsDefault(t *testing.T) {
	t.Parallel()
	if !IsDefault(nil) || !IsDefault(&net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}) {
		t.Error("a default destination is not default")
	}
	if IsDefault(&net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(8, 32)}) {
		t.Error("a /8 is default")
	}
}

func FuzzPrefix(f *testing.F) {
	f.Add([]byte{10, 0, 0, 1}, []byte{255, 255, 255, 0})
	f.Add([]byte(net.ParseIP("fd00::1").To16()), []byte(net.CIDRMask(64, 128)))
	f.Fuzz(func(t *testing.T, ip, mask []byte) {
		p, ok := Prefix(&net.IPNet{IP: ip, Mask: mask})
		if !ok {
			return
		}
		if p.Addr().Is4In6() || !p.IsValid() {
			t.Fatalf("Prefix gave %v", p)
		}
		if back, ok := Prefix(IPNet(p)); !ok || back != p {
			t.Fatalf("round trip of %v: %v, %v", p, back, ok)
		}
	})
}
