package hostport

import (
	"net/netip"
	"strings"
	"testing"
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
		proto, port, ok := parseDirName(k.dirName())
		if !ok || proto != k.Proto || port != k.Port {
			t.Errorf("parseDirName(%q) = %q %d %v", k.dirName(), proto, port, ok)
		}
		a, ok := parseFileName(k.fileName())
		if !ok || a != k.Addr {
			t.Errorf("parseFileName(%q) = %v %v, want %v", k.fileName(), a, ok, k.Addr)
		}
	}
	for _, bad := range []string{"tcp-0", "tcp-65536", "tcp-080", "icmp-1", "tcp", "-1", ""} {
		if _, _, ok := parseDirName(bad); ok {
			t.Errorf("parseDirName(%q) accepted", bad)
		}
	}
	for _, bad := range []string{"lock", "::ffff:1.2.3.4", "fe80::1%eth0", "010.0.0.1", ".tmp-1"} {
		if _, ok := parseFileName(bad); ok {
			t.Errorf("parseFileName(%q) accepted", bad)
		}
	}
}

func TestParseProcNet(t *testing.T) {
	// A listener on 127.0.0.1:8080, one on 0.0.0.0:22, an established
	// connection from local port 8081 (not a listener).
	tcp := `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0100007F:1F91 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
`
	socks, err := parseProcNet(strings.NewReader(tcp), "tcp")
	if err != nil {
		t.Fatal(err)
	}
	want := []Socket{{"tcp", netip.MustParseAddr("127.0.0.1"), 8080}, {"tcp", netip.MustParseAddr("0.0.0.0"), 22}}
	if len(socks) != len(want) || socks[0] != want[0] || socks[1] != want[1] {
		t.Errorf("tcp: got %v, want %v", socks, want)
	}
	// [::1]:53 and [fd00::1]:9000 as the kernel prints them (32-bit
	// words, host order).
	udp6 := `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
    0: 00000000000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0
    1: 000000FD000000000000000001000000:2328 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 1 2 0 0
`
	socks, err = parseProcNet(strings.NewReader(udp6), "udp")
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) != 2 || socks[0].Addr != netip.MustParseAddr("::1") || socks[0].Port != 53 ||
		socks[1].Addr != netip.MustParseAddr("fd00::1") || socks[1].Port != 9000 {
		t.Errorf("udp6: got %v", socks)
	}
}

func TestSocketOverlaps(t *testing.T) {
	s := func(addr string, port uint16) Socket { return Socket{"tcp", netip.MustParseAddr(addr), port} }
	for _, tc := range []struct {
		k    Key
		s    Socket
		want bool
	}{
		{key("tcp", "", 80), s("127.0.0.1", 80), true},
		{key("tcp", "10.0.0.1", 80), s("0.0.0.0", 80), true},
		{key("tcp", "10.0.0.1", 80), s("::", 80), true}, // dual-stack by default
		{key("tcp", "10.0.0.1", 80), s("127.0.0.1", 80), false},
		{key("tcp", "fd00::1", 80), s("0.0.0.0", 80), false},
		{key("tcp", "", 80), s("0.0.0.0", 81), false},
		{key("udp", "", 80), s("0.0.0.0", 80), false},
	} {
		if got := socketOverlaps(tc.k, tc.s); got != tc.want {
			t.Errorf("socketOverlaps(%v, %v) = %v, want %v", tc.k, tc.s, got, tc.want)
		}
	}
}
