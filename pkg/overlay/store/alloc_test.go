package store

import (
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestNetworkValidate(t *testing.T) {
	t.Parallel()
	good := Network{Name: "ov1", CIDR: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 24, VNI: 1, Port: 4789}
	if err := good.Validate(); err != nil {
		t.Fatalf("valid network: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Network)
		errHas []string // the field and the value
	}{
		{"no name", func(n *Network) { n.Name = "" }, []string{"name"}},
		{"escaping name", func(n *Network) { n.Name = "../etc" }, []string{"name", "../etc"}},
		{"no cidr", func(n *Network) { n.CIDR = netip.Prefix{} }, []string{"cidr"}},
		{"ipv6 cidr", func(n *Network) { n.CIDR = netip.MustParsePrefix("fd00::/64") }, []string{"cidr", "fd00::/64", "IPv4"}},
		{"4in6 cidr", func(n *Network) { n.CIDR = netip.MustParsePrefix("::ffff:10.0.0.0/104") }, []string{"cidr", "IPv4"}},
		{"host bits", func(n *Network) { n.CIDR = netip.MustParsePrefix("10.244.1.0/16") }, []string{"cidr", "10.244.1.0/16", "10.244.0.0/16"}},
		{"subnetLen = bits", func(n *Network) { n.SubnetLen = 16 }, []string{"subnetLen", "16"}},
		{"subnetLen short", func(n *Network) { n.SubnetLen = 8 }, []string{"subnetLen", "8"}},
		{"subnetLen 31", func(n *Network) { n.SubnetLen = 31 }, []string{"subnetLen", "31"}},
		{"vni 0", func(n *Network) { n.VNI = 0 }, []string{"vni", "0"}},
		{"vni too big", func(n *Network) { n.VNI = 1 << 24 }, []string{"vni", "16777216"}},
		{"port 0", func(n *Network) { n.Port = 0 }, []string{"port", "0"}},
		{"unknown encryption", func(n *Network) { n.Encryption = "wireguard" }, []string{"encryption", "wireguard"}},
		{"esp without rotation", func(n *Network) { n.Encryption = EncryptESP }, []string{"keyRotation", "0s"}},
		{"esp rotating too fast", func(n *Network) { n.Encryption, n.KeyRotation = EncryptESP, time.Second }, []string{"keyRotation", "1s"}},
		{"rotation in the clear", func(n *Network) { n.KeyRotation = time.Hour }, []string{"keyRotation", "1h0m0s"}},
	} {
		n := good
		tc.change(&n)
		err := n.Validate()
		if err == nil {
			t.Errorf("%s: no error", tc.name)
			continue
		}
		for _, s := range tc.errHas {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("%s: error %q does not name %q", tc.name, err, s)
			}
		}
	}
	enc := good
	enc.Encryption, enc.KeyRotation = EncryptESP, 12*time.Hour
	if err := enc.Validate(); err != nil || !enc.Encrypted() || good.Encrypted() {
		t.Errorf("esp every 12h: %v (encrypted %v)", err, enc.Encrypted())
	}
	edge := good
	edge.SubnetLen, edge.VNI = 30, MaxVNI
	if err := edge.Validate(); err != nil {
		t.Errorf("subnetLen 30, vni %d: %v", MaxVNI, err)
	}
}

func TestPickSubnet(t *testing.T) {
	t.Parallel()
	n := Network{Name: "ov", CIDR: netip.MustParsePrefix("10.244.0.0/22"), SubnetLen: 24, VNI: 1, Port: 4789}
	lease := func(host, subnet string) Lease {
		l := Lease{Host: host}
		if subnet != "" {
			l.Subnet = netip.MustParsePrefix(subnet)
		}
		return l
	}
	for _, tc := range []struct {
		name string
		want Lease
		live []Lease
		gets string // "" for ErrConflict
	}{
		{"empty network: the first subnet is skipped", lease("a", ""), nil, "10.244.1.0/24"},
		{"the first subnet, asked for", lease("a", "10.244.0.0/24"), nil, "10.244.0.0/24"},
		{"the first subnet, held", lease("a", ""), []Lease{lease("a", "10.244.0.0/24")}, "10.244.0.0/24"},
		{"lowest free", lease("c", ""), []Lease{lease("a", "10.244.0.0/24"), lease("b", "10.244.2.0/24")}, "10.244.1.0/24"},
		{"own first", lease("b", "10.244.1.0/24"), []Lease{lease("a", "10.244.0.0/24"), lease("b", "10.244.2.0/24")}, "10.244.2.0/24"},
		{"own lowest of two", lease("b", ""), []Lease{lease("b", "10.244.3.0/24"), lease("b", "10.244.2.0/24")}, "10.244.2.0/24"},
		{"own outside ignored", lease("b", ""), []Lease{lease("b", "10.99.0.0/24")}, "10.244.1.0/24"},
		{"wanted free", lease("a", "10.244.3.0/24"), nil, "10.244.3.0/24"},
		{"wanted taken", lease("c", "10.244.0.0/24"), []Lease{lease("a", "10.244.0.0/24")}, "10.244.1.0/24"},
		{"wanted outside", lease("a", "10.245.0.0/24"), nil, "10.244.1.0/24"},
		{"wanted wrong length", lease("a", "10.244.2.0/23"), nil, "10.244.1.0/24"},
		{"last free", lease("d", ""), []Lease{lease("a", "10.244.0.0/24"), lease("b", "10.244.1.0/24"), lease("c", "10.244.2.0/24")}, "10.244.3.0/24"},
		{"full", lease("e", ""), []Lease{lease("a", "10.244.0.0/24"), lease("b", "10.244.1.0/24"), lease("c", "10.244.2.0/24"), lease("d", "10.244.3.0/24")}, ""},
		{"full past the first", lease("e", ""), []Lease{lease("b", "10.244.1.0/24"), lease("c", "10.244.2.0/24"), lease("d", "10.244.3.0/24")}, ""},
		{"full but own", lease("d", ""), []Lease{lease("a", "10.244.0.0/24"), lease("b", "10.244.1.0/24"), lease("c", "10.244.2.0/24"), lease("d", "10.244.3.0/24")}, "10.244.3.0/24"},
	} {
		got, err := PickSubnet(n, tc.want, tc.live, nil)
		switch {
		case tc.gets == "" && !errors.Is(err, ErrConflict):
			t.Errorf("%s: got %s, %v; want ErrConflict", tc.name, got, err)
		case tc.gets != "" && (err != nil || got.String() != tc.gets):
			t.Errorf("%s: got %s, %v; want %s", tc.name, got, err, tc.gets)
		}
	}
}

// TestPickSubnetOrder: the five steps of PickSubnet, each where the one
// before it does not apply, and where it does; a case's name starts with
// its step.
func TestPickSubnetOrder(t *testing.T) {
	t.Parallel()
	n := Network{Name: "ov", CIDR: netip.MustParsePrefix("10.244.0.0/21"), SubnetLen: 24, VNI: 1, Port: 4789}
	lease := func(host string, i int) Lease {
		l := Lease{Host: host}
		if i >= 0 {
			l.Subnet = n.subnet(uint64(i))
		}
		return l
	}
	was := func(host string, i int, rev int64) LastHolder {
		return LastHolder{Subnet: n.subnet(uint64(i)), Host: host, Rev: rev}
	}
	// Subnets 1..7 (0 is the first); "h" is the host asking.
	for _, tc := range []struct {
		name string
		want Lease
		live []Lease
		past []LastHolder
		gets int // -1 for ErrConflict
	}{
		{"1 own live lease over all of the history", lease("h", 3),
			[]Lease{lease("h", 5)}, []LastHolder{was("h", 2, 9), was("h", 5, 1)}, 5},
		{"2 wanted and free over the host's history", lease("h", 4),
			nil, []LastHolder{was("h", 2, 9)}, 4},
		{"2 wanted and free although another host held it", lease("h", 4),
			nil, []LastHolder{was("x", 4, 9)}, 4},
		{"3 the host's last subnet over the lowest never held", lease("h", -1),
			[]Lease{lease("x", 1)}, []LastHolder{was("h", 6, 3)}, 6},
		{"3 wanted taken: the host's last subnet", lease("h", 1),
			[]Lease{lease("x", 1)}, []LastHolder{was("x", 1, 8), was("h", 6, 3)}, 6},
		{"3 the latest of the host's subnets", lease("h", -1),
			nil, []LastHolder{was("h", 2, 3), was("h", 6, 7), was("h", 4, 5)}, 6},
		{"3 of one revision, the lowest", lease("h", -1),
			nil, []LastHolder{was("h", 6, 7), was("h", 4, 7)}, 4},
		{"3 a subnet of the host's, now another's, is skipped", lease("h", -1),
			[]Lease{lease("x", 6)}, []LastHolder{was("h", 6, 9), was("h", 2, 3)}, 2},
		{"3 the first subnet, the host's last", lease("h", -1),
			nil, []LastHolder{was("h", 0, 3)}, 0},
		{"4 never held over an expired lease of another", lease("h", -1),
			[]Lease{lease("x", 2)}, []LastHolder{was("y", 1, 5), was("x", 2, 6)}, 3},
		{"4 never held, past the first which nobody held", lease("h", -1),
			nil, []LastHolder{was("y", 1, 5)}, 2},
		{"5 every free subnet held: the one left longest ago", lease("h", -1),
			[]Lease{lease("a", 1), lease("b", 3), lease("c", 7)},
			[]LastHolder{was("a", 1, 1), was("y", 2, 8), was("b", 3, 2), was("z", 4, 4), was("w", 5, 6), was("v", 6, 5), was("c", 7, 3)}, 4},
		{"5 of one revision, the lowest", lease("h", -1),
			[]Lease{lease("a", 1), lease("b", 2), lease("c", 3), lease("d", 4), lease("e", 5)},
			[]LastHolder{was("y", 7, 4), was("z", 6, 4)}, 6},
		{"5 the first subnet is not handed out, even held long ago", lease("h", -1),
			[]Lease{lease("a", 1), lease("b", 2), lease("c", 3), lease("d", 4), lease("e", 5), lease("f", 6)},
			[]LastHolder{was("y", 0, 1), was("z", 7, 9)}, 7},
		{"history outside the network is ignored", lease("h", -1),
			nil, []LastHolder{{Subnet: netip.MustParsePrefix("10.99.0.0/24"), Host: "h", Rev: 9}, {Subnet: netip.MustParsePrefix("10.244.0.0/23"), Host: "h", Rev: 9}}, 1},
		{"full, the first held long ago by another", lease("h", -1),
			[]Lease{lease("a", 1), lease("b", 2), lease("c", 3), lease("d", 4), lease("e", 5), lease("f", 6), lease("g", 7)},
			[]LastHolder{was("y", 0, 1)}, -1},
	} {
		got, err := PickSubnet(n, tc.want, tc.live, tc.past)
		switch {
		case tc.gets < 0 && !errors.Is(err, ErrConflict):
			t.Errorf("%s: got %s, %v; want ErrConflict", tc.name, got, err)
		case tc.gets >= 0 && (err != nil || got != n.subnet(uint64(tc.gets))):
			t.Errorf("%s: got %s, %v; want %s", tc.name, got, err, n.subnet(uint64(tc.gets)))
		}
		// Steps 1 and 2 decide without the history, and only they.
		decided := strings.HasPrefix(tc.name, "1 ") || strings.HasPrefix(tc.name, "2 ")
		if own, ok := OwnOrWanted(n, tc.want, tc.live); ok != decided || ok && own != got {
			t.Errorf("%s: OwnOrWanted = %s, %v; want %v, and PickSubnet's %s if so", tc.name, own, ok, decided, got)
		}
	}
}

// The search for a never-held subnet stays short in a large network
// whose history is long, and finds the gap after it.
func TestPickSubnetLongHistory(t *testing.T) {
	t.Parallel()
	n := Network{Name: "big", CIDR: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 30, VNI: 1, Port: 4789}
	var past []LastHolder
	for i := uint64(1); i <= 5000; i++ {
		past = append(past, LastHolder{Subnet: n.subnet(i), Host: "gone", Rev: int64(i)})
	}
	if got, err := PickSubnet(n, Lease{Host: "new"}, nil, past); err != nil || got != n.subnet(5001) {
		t.Fatalf("got %s, %v; want %s", got, err, n.subnet(5001))
	}
}

func TestSubnetsOfLargeNetwork(t *testing.T) {
	t.Parallel()
	n := Network{Name: "big", CIDR: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 30, VNI: 1, Port: 4789}
	if c := n.subnetCount(); c != 1<<22 {
		t.Fatalf("subnetCount = %d; want %d", c, 1<<22)
	}
	for i, want := range map[uint64]string{0: "10.0.0.0/30", 1: "10.0.0.4/30", 64: "10.0.1.0/30", 1<<22 - 1: "10.255.255.252/30"} {
		if got := n.subnet(i).String(); got != want {
			t.Errorf("subnet(%d) = %s; want %s", i, got, want)
		}
	}
	if !n.HasSubnet(netip.MustParsePrefix("10.255.255.252/30")) || n.HasSubnet(netip.MustParsePrefix("11.0.0.0/30")) {
		t.Error("HasSubnet wrong at the network's edges")
	}
}

func TestSubnetKey(t *testing.T) {
	t.Parallel()
	p := netip.MustParsePrefix("10.244.3.0/24")
	for _, sep := range []byte{'-', '_'} {
		k := SubnetKey(p, sep)
		if got, err := ParseSubnetKey(k, sep); err != nil || got != p {
			t.Errorf("ParseSubnetKey(%q) = %s, %v; want %s", k, got, err, p)
		}
	}
	if k := SubnetKey(p, '-'); k != "10.244.3.0-24" {
		t.Errorf("etcd key = %q", k)
	}
	for _, bad := range []string{"", "10.244.3.0", "10.244.3.0-33", "10.244.3.1-24", "fd00::-64", "10.244.3.0-024", "x-24", "10.244.3.0_24"} {
		if p, err := ParseSubnetKey(bad, '-'); err == nil {
			t.Errorf("ParseSubnetKey(%q) = %s; want an error", bad, p)
		}
	}
}

func TestDecodeLease(t *testing.T) {
	t.Parallel()
	subnet := netip.MustParsePrefix("10.244.3.0/24")
	good := `{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`
	l, err := DecodeLease([]byte(good), subnet)
	if err != nil || l.Host != "n1" || l.VTEP != netip.MustParseAddr("192.0.2.1") {
		t.Fatalf("DecodeLease(good) = %+v, %v", l, err)
	}
	for _, bad := range []string{
		`{`,
		`{"subnet":"10.244.4.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`,
		`{"subnet":"10.244.3.0/24","host":"","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`,
		`{"subnet":"10.244.3.0/24","host":"n\n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`,
		`{"subnet":"10.244.3.0/24","host":"n1","vtep":"","mac":"02:00:00:00:00:01"}`,
		`{"subnet":"10.244.3.0/24","host":"n1","vtep":"224.0.0.1","mac":"02:00:00:00:00:01"}`,
		`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"01:00:00:00:00:01"}`,
		`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01:02:03"}`,
	} {
		if l, err := DecodeLease([]byte(bad), subnet); err == nil {
			t.Errorf("DecodeLease(%s) = %+v; want an error", bad, l)
		}
	}
}

// FuzzDecodeLease: what a backend reads back for a lease never panics, and
// whatever it accepts is valid and survives a round trip, attributes
// included.
func FuzzDecodeLease(f *testing.F) {
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","attrs":{"ack":{"version":1,"data":{"seen":[2,3]}}}}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","attrs":{"Ack":{"version":0}}}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.5/24","host":"n1"}`), "10.244.3.0-24")
	f.Add([]byte(`null`), "")
	f.Fuzz(func(t *testing.T, b []byte, key string) {
		subnet, err := ParseSubnetKey(key, '_')
		if err != nil {
			subnet = netip.MustParsePrefix("10.244.3.0/24")
		}
		if l, err := DecodeLease(b, subnet); err == nil {
			if verr := l.Validate(); verr != nil || l.Subnet != subnet {
				t.Fatalf("accepted %+v: %v", l, verr)
			}
			again, err := json.Marshal(l)
			if err != nil {
				t.Fatal(err)
			}
			if l2, err := DecodeLease(again, subnet); err != nil || l2 != l {
				t.Fatalf("round trip of %+v: %+v, %v", l, l2, err)
			}
		}
	})
}

func TestDecodeLastHolder(t *testing.T) {
	t.Parallel()
	subnet := netip.MustParsePrefix("10.244.3.0/24")
	h, err := DecodeLastHolder([]byte(`{"subnet":"10.244.3.0/24","host":"n1","later":"ignored"}`), subnet)
	if err != nil || h != (LastHolder{Subnet: subnet, Host: "n1"}) {
		t.Fatalf("DecodeLastHolder(good) = %+v, %v", h, err)
	}
	for _, bad := range []string{
		``,
		`{`,
		`null`,
		`{"host":"n1"}`,
		`{"subnet":"10.244.4.0/24","host":"n1"}`,
		`{"subnet":"10.244.3.0/24"}`,
		`{"subnet":"10.244.3.0/24","host":"n/1"}`,
		`{"subnet":"10.244.3.0/24","host":"n1","pad":"` + strings.Repeat("x", MaxLastHolderSize) + `"}`,
	} {
		if h, err := DecodeLastHolder([]byte(bad), subnet); err == nil {
			t.Errorf("DecodeLastHolder(%.60s) = %+v; want an error", bad, h)
		}
	}
}

// FuzzDecodeLastHolder: a stored last-holder record never panics the
// decoder, and an accepted one names a valid host and the subnet of its
// key, fits the bound when written again and survives a round trip.
func FuzzDecodeLastHolder(f *testing.F) {
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1"}`), "10.244.3.0-24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"<\u0026>\u00e9"}`), "10.244.3.0-24")
	f.Add([]byte(`{"subnet":"10.244.3.5/24","host":""}`), "10.244.3.0-24")
	f.Add([]byte(`[]`), "")
	f.Fuzz(func(t *testing.T, b []byte, key string) {
		subnet, err := ParseSubnetKey(key, '-')
		if err != nil {
			subnet = netip.MustParsePrefix("10.244.3.0/24")
		}
		h, err := DecodeLastHolder(b, subnet)
		if err != nil {
			return
		}
		if verr := ValidateHost(h.Host); verr != nil || h.Subnet != subnet || h.Rev != 0 {
			t.Fatalf("accepted %+v: %v", h, verr)
		}
		again, err := json.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if h2, err := DecodeLastHolder(again, subnet); err != nil || h2 != h {
			t.Fatalf("round trip of %+v (%d bytes): %+v, %v", h, len(again), h2, err)
		}
	})
}

// FuzzDecodeNetwork: a stored network config never panics the decoder,
// and an accepted one is valid and survives a round trip.
func FuzzDecodeNetwork(f *testing.F) {
	f.Add([]byte(`{"name":"ov1","cidr":"10.244.0.0/16","subnetLen":24,"vni":1,"port":4789}`))
	f.Add([]byte(`{"name":"ov1","cidr":"fd00::/64","subnetLen":80,"vni":1,"port":4789}`))
	f.Add([]byte(`{"name":"../x","cidr":"10.0.0.0/0","subnetLen":-1,"vni":99999999,"port":70000}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := DecodeNetwork(b)
		if err != nil {
			return
		}
		if verr := n.Validate(); verr != nil {
			t.Fatalf("accepted %+v: %v", n, verr)
		}
		again, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		if n2, err := DecodeNetwork(again); err != nil || n2 != n {
			t.Fatalf("round trip of %+v: %+v, %v", n, n2, err)
		}
		if c := n.subnetCount(); c == 0 || !n.HasSubnet(n.subnet(c-1)) {
			t.Fatalf("last subnet of %+v not in it", n)
		}
	})
}
