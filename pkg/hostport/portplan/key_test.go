package portplan

import (
	"net/netip"
	"testing"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/owner"
)

func key(proto, addr string, port uint16) Key {
	k := Key{Proto: proto, Port: port}
	if addr != "" {
		k.Addr = netip.MustParseAddr(addr)
	}
	return k
}

func TestOverlaps(t *testing.T) {
	for _, tc := range []struct {
		a, b Key
		want bool
	}{
		{key("tcp", "", 80), key("tcp", "", 80), true},
		{key("tcp", "", 80), key("tcp", "0.0.0.0", 80), true},
		{key("tcp", "", 80), key("tcp", "::", 80), true},
		{key("tcp", "", 80), key("tcp", "10.0.0.1", 80), true},
		{key("tcp", "", 80), key("tcp", "fd00::1", 80), true},
		{key("tcp", "0.0.0.0", 80), key("tcp", "10.0.0.1", 80), true},
		{key("tcp", "0.0.0.0", 80), key("tcp", "0.0.0.0", 80), true},
		{key("tcp", "::", 80), key("tcp", "fd00::1", 80), true},
		{key("tcp", "10.0.0.1", 80), key("tcp", "10.0.0.1", 80), true},
		{key("tcp", "0.0.0.0", 80), key("tcp", "::", 80), false},
		{key("tcp", "0.0.0.0", 80), key("tcp", "fd00::1", 80), false},
		{key("tcp", "10.0.0.1", 80), key("tcp", "10.0.0.2", 80), false},
		{key("tcp", "", 80), key("udp", "", 80), false},
		{key("tcp", "", 80), key("tcp", "", 81), false},
	} {
		if got := tc.a.Overlaps(tc.b); got != tc.want {
			t.Errorf("%v overlaps %v = %v, want %v", tc.a, tc.b, got, tc.want)
		}
		if got := tc.b.Overlaps(tc.a); got != tc.want {
			t.Errorf("%v overlaps %v = %v, want %v (not symmetric)", tc.b, tc.a, got, tc.want)
		}
	}
}

func TestNames(t *testing.T) {
	for _, k := range []Key{key("tcp", "", 8080), key("udp", "0.0.0.0", 53), key("sctp", "fd00::1", 9), key("tcp", "::", 1)} {
		proto, port, ok := ParseDirName(k.DirName())
		if !ok || proto != k.Proto || port != k.Port {
			t.Errorf("ParseDirName(%q) = %q %d %v", k.DirName(), proto, port, ok)
		}
		a, ok := ParseFileName(k.FileName())
		if !ok || a != k.Addr {
			t.Errorf("ParseFileName(%q) = %v %v, want %v", k.FileName(), a, ok, k.Addr)
		}
	}
	for _, bad := range []string{"tcp-0", "tcp-65536", "tcp-080", "icmp-1", "tcp", "-1", ""} {
		if _, _, ok := ParseDirName(bad); ok {
			t.Errorf("ParseDirName(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"lock", "::ffff:1.2.3.4", "fe80::1%eth0", "010.0.0.1", ".tmp-1"} {
		if _, ok := ParseFileName(bad); ok {
			t.Errorf("ParseFileName(%q) accepted", bad)
		}
	}
}

func testAttachment(id string, cip4, cip6 string, ms ...Mapping) Attachment {
	a := Attachment{Owner: owner.Owner{Network: "n1", ContainerID: id, IfName: "eth0"}, Mappings: ms, SNAT: true, Backend: config.BackendNFTables}
	if cip4 != "" {
		a.Targets = append(a.Targets, netip.MustParsePrefix(cip4))
	}
	if cip6 != "" {
		a.Targets = append(a.Targets, netip.MustParsePrefix(cip6))
	}
	return a
}

func mapping(proto, addr string, port, cport uint16) Mapping {
	k := Key{Proto: proto, Port: port}
	if addr != "" {
		k.Addr = netip.MustParseAddr(addr)
	}
	return Mapping{Key: k, ContainerPort: cport}
}

// FuzzParseNames: the reservation directory's names are outside input
// (anyone with root can create files there); what parses must render back
// to itself, so a key has one file.
func FuzzParseNames(f *testing.F) {
	f.Add("tcp-8080", "0.0.0.0")
	f.Add("udp-53", "any")
	f.Add("sctp-1", "fd00::1")
	f.Add("tcp-08080", "::ffff:1.2.3.4")
	f.Fuzz(func(t *testing.T, dir, file string) {
		if proto, port, ok := ParseDirName(dir); ok {
			if k := (Key{Proto: proto, Port: port}); k.DirName() != dir {
				t.Fatalf("ParseDirName(%q) = %s %d, renders %q", dir, proto, port, k.DirName())
			}
		}
		if a, ok := ParseFileName(file); ok {
			if k := (Key{Addr: a}); k.FileName() != file {
				t.Fatalf("ParseFileName(%q) = %v, renders %q", file, a, k.FileName())
			}
		}
	})
}
