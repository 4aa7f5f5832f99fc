package espplan

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

var t0 = time.Date(2026, 12, 8, 0, 0, 0, 0, time.UTC)

func secret(b byte) []byte { return bytes.Repeat([]byte{b}, KeySize) }

func ringOf(epochs ...uint32) Ring {
	var r Ring
	for _, e := range epochs {
		r.Keys = append(r.Keys, Key{Epoch: e, Secret: secret(byte(e)), Created: t0.Add(time.Duration(e) * time.Hour)})
	}
	return r
}

func TestRingValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Ring
		want string // "" for valid
	}{
		{"one key", ringOf(1), ""},
		{"three keys", ringOf(4, 5, 6), ""},
		{"empty", Ring{}, "0 keys"},
		{"too many", ringOf(1, 2, 3, 4, 5, 6, 7, 8, 9), "9 keys"},
		{"epoch 0", Ring{Keys: []Key{{Epoch: 0, Secret: secret(1)}}}, "epoch 0"},
		{"gap", ringOf(1, 3), "epoch 3 after 1"},
		{"descending", ringOf(2, 1), "epoch 1 after 2"},
		{"short secret", Ring{Keys: []Key{{Epoch: 1, Secret: []byte{1, 2}}}}, "2 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.r.Validate()
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("Validate() = %v; want %q", err, tc.want)
			}
		})
	}
}

func TestNextRing(t *testing.T) {
	rot := Rotation{Every: 12 * time.Hour, Grace: time.Minute}
	n := 0
	gen := func() ([]byte, error) { n++; return secret(0x40 + byte(n)), nil }
	t.Run("first key", func(t *testing.T) {
		r, changed, err := NextRing(Ring{}, t0, rot, 0, gen)
		if err != nil || !changed || !slices.Equal(r.Epochs(), []uint32{1}) || !r.Keys[0].Created.Equal(t0) {
			t.Fatalf("NextRing(empty) = %v, %v, %v", r, changed, err)
		}
	})
	r := Ring{Keys: []Key{{Epoch: 1, Secret: secret(1), Created: t0}}}
	t.Run("not yet", func(t *testing.T) {
		if got, changed, _ := NextRing(r, t0.Add(12*time.Hour-time.Second), rot, 1, gen); changed || !slices.Equal(got.Epochs(), []uint32{1}) {
			t.Fatalf("before 12h: %v, changed %v", got, changed)
		}
	})
	t.Run("rotate", func(t *testing.T) {
		got, changed, _ := NextRing(r, t0.Add(12*time.Hour), rot, 1, gen)
		if !changed || !slices.Equal(got.Epochs(), []uint32{1, 2}) || !got.Keys[1].Created.Equal(t0.Add(12*time.Hour)) {
			t.Fatalf("at 12h: %v, changed %v", got, changed)
		}
		if bytes.Equal(got.Keys[1].Secret, got.Keys[0].Secret) {
			t.Fatal("the new key has the old secret")
		}
		if len(r.Keys) != 1 {
			t.Fatal("NextRing changed its argument")
		}
	})
	three := Ring{Keys: []Key{
		{Epoch: 3, Secret: secret(3), Created: t0},
		{Epoch: 4, Secret: secret(4), Created: t0.Add(time.Hour)},
		{Epoch: 5, Secret: secret(5), Created: t0.Add(2 * time.Hour)},
	}}
	now := t0.Add(3 * time.Hour) // no rotation due
	for _, tc := range []struct {
		name  string
		minTx uint32
		now   time.Time
		want  []uint32
	}{
		{"every host on 5: drop 3, keep the newest two", 5, now, []uint32{4, 5}},
		{"nobody transmits: as if all were on the newest", 0, now, []uint32{4, 5}},
		{"a host still on 3: keep it", 3, now, []uint32{3, 4, 5}},
		{"a host on 4: drop only 3", 4, now, []uint32{4, 5}},
		{"within the grace after 4 was made: keep 3", 5, t0.Add(time.Hour + 30*time.Second), []uint32{3, 4, 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, changed, err := NextRing(three, tc.now, rot, tc.minTx, gen)
			if err != nil || !slices.Equal(got.Epochs(), tc.want) || changed != !slices.Equal(tc.want, three.Epochs()) {
				t.Fatalf("NextRing = %v (changed %v, %v); want epochs %v", got.Epochs(), changed, err, tc.want)
			}
		})
	}
	t.Run("a host stuck on the oldest: MaxKeys bounds the ring", func(t *testing.T) {
		full := ringOf(1, 2, 3, 4, 5, 6, 7, 8)
		got, changed, err := NextRing(full, t0.Add(30*time.Hour), rot, 1, gen)
		if err != nil || !changed || !slices.Equal(got.Epochs(), []uint32{2, 3, 4, 5, 6, 7, 8, 9}) {
			t.Fatalf("NextRing = %v (%v, %v)", got.Epochs(), changed, err)
		}
		if err := got.Validate(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("no randomness", func(t *testing.T) {
		boom := errors.New("no entropy")
		got, changed, err := NextRing(r, t0.Add(13*time.Hour), rot, 1, func() ([]byte, error) { return nil, boom })
		if !errors.Is(err, boom) || changed || !slices.Equal(got.Epochs(), []uint32{1}) {
			t.Fatalf("NextRing = %v, %v, %v; want the ring unchanged and the error", got.Epochs(), changed, err)
		}
		if _, _, err := NextRing(r, t0.Add(13*time.Hour), rot, 1, func() ([]byte, error) { return []byte{1}, nil }); err == nil {
			t.Fatal("a 1-byte key was taken")
		}
	})
}

func TestDefaultGrace(t *testing.T) {
	for d, want := range map[time.Duration]time.Duration{
		12 * time.Hour: 5 * time.Minute, 10 * time.Minute: time.Minute, 2 * time.Second: time.Second,
	} {
		if got := DefaultGrace(d); got != want {
			t.Errorf("DefaultGrace(%v) = %v; want %v", d, got, want)
		}
	}
}

func TestRingPrintsNoSecret(t *testing.T) {
	r := Ring{Keys: []Key{{Epoch: 7, Secret: []byte("0123456789abcdef"), Created: t0}}}
	for _, s := range []string{r.String(), r.Keys[0].String()} {
		if strings.Contains(s, "0123") || strings.Contains(s, hex.EncodeToString(r.Keys[0].Secret)[:8]) {
			t.Errorf("%q shows the secret", s)
		}
	}
}

func h(name, vtep string, idx uint32) Host {
	return Host{Name: name, VTEP: netip.MustParseAddr(vtep), Index: idx}
}

// The derivation is a wire protocol between berth versions: pinned to a
// vector computed outside Go (Python's hmac, RFC 5869 by hand).
func TestSAKeyVector(t *testing.T) {
	k := Key{Epoch: 3, Secret: []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}}
	got, err := SAKey("ov", k, h("h1", "192.168.77.11", 1), h("h2", "192.168.77.12", 2))
	if err != nil {
		t.Fatal(err)
	}
	if want := "bfc2b960e7e1d951a33c3d1ede18d5c2c6e0e35c"; hex.EncodeToString(got) != want {
		t.Fatalf("SAKey = %x; want %s", got, want)
	}
}

func TestSAKeysDiffer(t *testing.T) {
	a, b, c := h("h1", "192.168.77.11", 1), h("h2", "192.168.77.12", 2), h("h3", "192.168.77.13", 3)
	k1, k2 := Key{Epoch: 1, Secret: secret(1)}, Key{Epoch: 2, Secret: secret(2)}
	seen := map[string]string{}
	for _, tc := range []struct {
		what     string
		net      string
		k        Key
		from, to Host
	}{
		{"a→b", "ov", k1, a, b}, {"b→a", "ov", k1, b, a}, {"a→c", "ov", k1, a, c}, {"c→b", "ov", k1, c, b},
		{"a→b epoch 2", "ov", k2, a, b}, {"a→b other network", "ov2", k1, a, b},
		{"a→b, a's VTEP changed", "ov", k1, h("h1", "192.168.77.99", 1), b},
	} {
		key, err := SAKey(tc.net, tc.k, tc.from, tc.to)
		if err != nil || len(key) != SAKeySize {
			t.Fatalf("%s: %x, %v", tc.what, key, err)
		}
		if o, dup := seen[string(key)]; dup {
			t.Errorf("%s and %s share a key", tc.what, o)
		}
		seen[string(key)] = tc.what
	}
}

func TestSPI(t *testing.T) {
	if got := SPI(h("h1", "10.0.0.1", 0x2a), 3); got != 0xb300002a {
		t.Errorf("SPI(index 0x2a, epoch 3) = %#x; want 0xb300002a", got)
	}
	if got := SPI(h("h1", "10.0.0.1", 5), 19); got != 0xb3000005 {
		t.Errorf("SPI(epoch 19) = %#x: the epoch's low four bits", got)
	}
	// One receiver: every sender and ring key has its own SPI.
	seen := map[uint32]bool{}
	for idx := range uint32(300) {
		for e := uint32(10); e < 10+MaxKeys; e++ {
			s := SPI(h("x", "10.0.0.1", idx), e)
			if seen[s] || !IsBerthSPI(s) || s < 256 {
				t.Fatalf("SPI(index %d, epoch %d) = %#x: repeated or not berth's", idx, e, s)
			}
			seen[s] = true
		}
	}
	if IsBerthSPI(0xc0000001) || IsBerthSPI(0x100) {
		t.Error("IsBerthSPI takes another's SPI")
	}
}

func network(cidr string, bits int) store.Network {
	return store.Network{Name: "ov", CIDR: netip.MustParsePrefix(cidr), SubnetLen: bits, VNI: 4242, Port: 4789}
}

func TestSubnetIndexAndCheckNetwork(t *testing.T) {
	n := network("10.244.0.0/16", 24)
	for p, want := range map[string]uint32{"10.244.0.0/24": 0, "10.244.3.0/24": 3, "10.244.255.0/24": 255} {
		if got, err := SubnetIndex(n, netip.MustParsePrefix(p)); err != nil || got != want {
			t.Errorf("SubnetIndex(%s) = %d, %v; want %d", p, got, err, want)
		}
	}
	if _, err := SubnetIndex(n, netip.MustParsePrefix("10.245.0.0/24")); err == nil {
		t.Error("a subnet outside the network has an index")
	}
	if err := CheckNetwork(network("10.0.0.0/8", 30)); err != nil { // 2^22 subnets
		t.Errorf("CheckNetwork(/8 into /30) = %v", err)
	}
	if err := CheckNetwork(network("10.0.0.0/4", 30)); err == nil || !strings.Contains(err.Error(), "2^26") {
		t.Errorf("CheckNetwork(/4 into /30) = %v; want the 2^26 subnets refused", err)
	}
	if got := Reqid(n); got != 0xb0001092 {
		t.Errorf("Reqid = %#x", got)
	}
}

func TestPlanSAs(t *testing.T) {
	self := h("h1", "192.168.77.11", 1)
	ring := ringOf(4, 5)
	peers := []Peer{
		{Host: h("h3", "192.168.77.13", 3), State: State{Rx: 4}, Synced: true},         // can receive 4 only
		{Host: h("h2", "192.168.77.12", 2), State: State{Rx: 5}, Synced: true},         // has the newest
		{Host: h("h4", "192.168.77.14", 4), State: State{Rx: 0}, Synced: true},         // nothing installed yet
		{Host: h("h5", "192.168.77.15", 5), State: State{Rx: 5}, Synced: false, Tx: 4}, // re-acquired: keep 4
		{Host: h("h6", "192.168.77.16", 6), State: State{Rx: 5}, Synced: false},        // has not synced this host
		{Host: h("h7", "192.168.77.17", 7), State: State{Rx: 9}, Synced: true},         // ahead of this host's ring
		{Host: h("h8", "192.168.77.18", 8), State: State{Rx: 5}, Synced: false, Tx: 2}, // sent with a key gone
	}
	p, err := PlanSAs("ov", self, peers, ring)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range p.SAs {
		lines = append(lines, s.String())
		if len(s.Key) != SAKeySize {
			t.Errorf("%s: key of %d bytes", s, len(s.Key))
		}
	}
	want := []string{
		"in src 192.168.77.12 dst 192.168.77.11 spi 0xb4000002 epoch 4",
		"in src 192.168.77.12 dst 192.168.77.11 spi 0xb5000002 epoch 5",
		"in src 192.168.77.13 dst 192.168.77.11 spi 0xb4000003 epoch 4",
		"in src 192.168.77.13 dst 192.168.77.11 spi 0xb5000003 epoch 5",
		"in src 192.168.77.14 dst 192.168.77.11 spi 0xb4000004 epoch 4",
		"in src 192.168.77.14 dst 192.168.77.11 spi 0xb5000004 epoch 5",
		"in src 192.168.77.15 dst 192.168.77.11 spi 0xb4000005 epoch 4",
		"in src 192.168.77.15 dst 192.168.77.11 spi 0xb5000005 epoch 5",
		"in src 192.168.77.16 dst 192.168.77.11 spi 0xb4000006 epoch 4",
		"in src 192.168.77.16 dst 192.168.77.11 spi 0xb5000006 epoch 5",
		"in src 192.168.77.17 dst 192.168.77.11 spi 0xb4000007 epoch 4",
		"in src 192.168.77.17 dst 192.168.77.11 spi 0xb5000007 epoch 5",
		"in src 192.168.77.18 dst 192.168.77.11 spi 0xb4000008 epoch 4",
		"in src 192.168.77.18 dst 192.168.77.11 spi 0xb5000008 epoch 5",
		"out src 192.168.77.11 dst 192.168.77.12 spi 0xb5000001 epoch 5",
		"out src 192.168.77.11 dst 192.168.77.13 spi 0xb4000001 epoch 4",
		"out src 192.168.77.11 dst 192.168.77.15 spi 0xb4000001 epoch 4",
		"out src 192.168.77.11 dst 192.168.77.17 spi 0xb5000001 epoch 5",
	}
	if !slices.Equal(lines, want) {
		t.Fatalf("plan:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if p.State != (State{Rx: 5, Tx: 4}) {
		t.Errorf("state %+v; want rx 5 (the ring's newest), tx 4 (the oldest sent with)", p.State)
	}
	// The two ends of a pair agree: h2's receive SA from h1 is h1's
	// transmit SA to h2.
	p2, err := PlanSAs("ov", peers[1].Host, []Peer{{Host: self, State: State{Rx: 5}, Synced: true}}, ring)
	if err != nil {
		t.Fatal(err)
	}
	out := p.SAs[14]
	i := slices.IndexFunc(p2.SAs, func(s SA) bool { return s.ID() == out.ID() })
	if i < 0 || p2.SAs[i].Out || !bytes.Equal(p2.SAs[i].Key, out.Key) || p2.SAs[i].Src != out.Src {
		t.Fatalf("h2 has no receive SA matching h1's %s: %v", out, p2.SAs)
	}
}

func TestPlanSAsRefusesSharedIdentity(t *testing.T) {
	self := h("h1", "192.168.77.11", 1)
	_, err := PlanSAs("ov", self, []Peer{
		{Host: h("h2", "192.168.77.12", 2)}, {Host: h("h3", "192.168.77.13", 2)}, // one subnet index twice
	}, ringOf(1))
	if err == nil || !strings.Contains(err.Error(), "spi 0xb1000002") {
		t.Fatalf("PlanSAs = %v; want the shared SPI refused", err)
	}
}

func TestStepsSwitchKeepsATransmitSA(t *testing.T) {
	self, peer := h("h1", "192.168.77.11", 1), h("h2", "192.168.77.12", 2)
	ring := ringOf(4, 5)
	before, _ := PlanSAs("ov", self, []Peer{{Host: peer, State: State{Rx: 4}, Synced: true}}, ring)
	after, _ := PlanSAs("ov", self, []Peer{{Host: peer, State: State{Rx: 5}, Synced: true}}, ring)
	c := Diff(before.SAs, after.SAs)
	want := "+ out src 192.168.77.11 dst 192.168.77.12 spi 0xb5000001 epoch 5\n" +
		"- out src 192.168.77.11 dst 192.168.77.12 spi 0xb4000001 epoch 4\n"
	if got := c.String(); got != want {
		t.Fatalf("switch to epoch 5:\n%swant:\n%s", got, want)
	}
	if c := Diff(after.SAs, after.SAs); !c.Empty() {
		t.Fatalf("no change: %s", c)
	}
	// A rotation: the ring gains 6 and loses 4.
	next, _ := PlanSAs("ov", self, []Peer{{Host: peer, State: State{Rx: 5}, Synced: true}}, ringOf(5, 6))
	want = "+ in src 192.168.77.12 dst 192.168.77.11 spi 0xb6000002 epoch 6\n" +
		"- in src 192.168.77.12 dst 192.168.77.11 spi 0xb4000002 epoch 4\n"
	if got := Diff(after.SAs, next.SAs).String(); got != want {
		t.Fatalf("rotation:\n%swant:\n%s", got, want)
	}
}

func TestStepsReplaceDeletesFirst(t *testing.T) {
	old := SA{Src: netip.MustParseAddr("192.168.77.12"), Dst: netip.MustParseAddr("192.168.77.11"), SPI: 0xb1000002, Epoch: 1, Key: secret(1)}
	nu := old
	nu.Key = secret(2) // the ring's key 1 is another (a new ring after every host was gone)
	stray := SA{Out: true, Src: old.Dst, Dst: netip.MustParseAddr("192.168.77.40"), SPI: 0xb1000001, Epoch: 1, Key: secret(3)}
	steps := Diff([]SA{stray, old}, []SA{nu}).Steps()
	if len(steps) != 3 || !steps[0].Delete || !bytes.Equal(steps[0].SA.Key, old.Key) || steps[1].Delete || !bytes.Equal(steps[1].SA.Key, nu.Key) ||
		!steps[2].Delete || steps[2].SA.ID() != stray.ID() {
		t.Fatalf("steps %v; want delete the old SA, add the new, then delete the stray one", steps)
	}
}

func TestInnerMTU(t *testing.T) {
	if got := InnerMTU(1500); got != 1416 {
		t.Errorf("InnerMTU(1500) = %d; want 1416", got)
	}
	for u := 576; u <= 9000; u++ {
		m := InnerMTU(u)
		if OuterSize(m) > u || OuterSize(m+1) <= u {
			t.Fatalf("InnerMTU(%d) = %d: outer %d, one more byte %d", u, m, OuterSize(m), OuterSize(m+1))
		}
	}
	// 1416 bytes inside: 20 IP + 16 ESP + 8 UDP + 8 VXLAN + 14 Ethernet
	// + 1416 + 0 padding + 2 trailer + 16 ICV.
	if got := OuterSize(1416); got != 1500 {
		t.Errorf("OuterSize(1416) = %d", got)
	}
}

func FuzzRingAttr(f *testing.F) {
	good, _ := RingAttr.Set(store.Attrs{}, ringOf(3, 4))
	a, _ := good.Get(RingAttr.Name)
	f.Add([]byte(a.Data))
	f.Add([]byte(`{"keys":[{"epoch":1,"secret":"AAECAwQFBgcICQoLDA0ODw==","created":"2026-12-08T00:00:00Z"}]}`))
	f.Add([]byte(`{"keys":[{"epoch":4294967295,"secret":"AAECAwQFBgcICQoLDA0ODw=="}]}`))
	f.Add([]byte(`{"keys":null}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var r Ring
		if json.Unmarshal(data, &r) != nil || r.Validate() != nil {
			return
		}
		// A valid ring plans, prints without secrets and rotates.
		for _, k := range r.Keys {
			if strings.Contains(r.String()+k.String(), base64.StdEncoding.EncodeToString(k.Secret)) {
				t.Fatalf("%q shows a secret", r.String())
			}
		}
		p, err := PlanSAs("ov", h("h1", "192.168.77.11", 1), []Peer{{Host: h("h2", "192.168.77.12", 2), State: State{Rx: ^uint32(0)}, Synced: true}}, r)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.SAs) != len(r.Keys)+1 {
			t.Fatalf("%d SAs for %d keys and one peer", len(p.SAs), len(r.Keys))
		}
		if n, _ := r.Newest(); n.Epoch == ^uint32(0) {
			if _, _, err := NextRing(r, time.Now().Add(100*365*24*time.Hour), Rotation{Every: time.Hour}, 0, func() ([]byte, error) { return secret(9), nil }); err == nil {
				t.Fatal("NextRing wrapped the epoch")
			}
			return
		}
		next, _, err := NextRing(r, time.Now().Add(100*365*24*time.Hour), Rotation{Every: time.Hour}, 0, func() ([]byte, error) { return secret(9), nil })
		if err != nil || next.Validate() != nil {
			t.Fatalf("NextRing of a valid ring: %v, %v", next, err)
		}
	})
}

func TestDue(t *testing.T) {
	rot := Rotation{Every: time.Hour, Grace: time.Minute}
	r := Ring{Keys: []Key{{Epoch: 1, Secret: secret(1), Created: t0}}}
	for _, tc := range []struct {
		what  string
		r     Ring
		now   time.Time
		minTx uint32
		want  bool
	}{
		{"empty ring", Ring{}, t0, 0, true},
		{"young key", r, t0.Add(59 * time.Minute), 1, false},
		{"old key", r, t0.Add(time.Hour), 1, true},
		{"a key to drop", ringOf(1, 2, 3), t0.Add(3*time.Hour + 30*time.Minute), 3, true},
		{"a key still sent with", ringOf(1, 2, 3), t0.Add(3*time.Hour + 30*time.Minute), 1, false},
	} {
		if got := Due(tc.r, tc.now, rot, tc.minTx); got != tc.want {
			t.Errorf("%s: Due = %v; want %v", tc.what, got, tc.want)
		}
	}
}

func TestResetFrom(t *testing.T) {
	self := h("h1", "192.168.77.11", 1)
	p, err := PlanSAs("ov", self, []Peer{
		{Host: h("h2", "192.168.77.12", 2), State: State{Rx: 2}, Synced: true},
		{Host: h("h3", "192.168.77.13", 3), State: State{Rx: 2}, Synced: true},
	}, ringOf(1, 2))
	if err != nil {
		t.Fatal(err)
	}
	got := ResetFrom(p.SAs, netip.MustParseAddr("192.168.77.12")).String()
	want := "- in src 192.168.77.12 dst 192.168.77.11 spi 0xb1000002 epoch 1\n" +
		"+ in src 192.168.77.12 dst 192.168.77.11 spi 0xb1000002 epoch 1\n" +
		"- in src 192.168.77.12 dst 192.168.77.11 spi 0xb2000002 epoch 2\n" +
		"+ in src 192.168.77.12 dst 192.168.77.11 spi 0xb2000002 epoch 2\n"
	if got != want {
		t.Fatalf("ResetFrom h2:\n%swant:\n%s", got, want)
	}
}
