package hostport

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/berth-cni/berth/pkg/hostport/portplan"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/ from the fake")

// nftStep is one step of a scenario: a call of the datapath, or a change
// made by hand (with nft, by someone else) straight on the connection,
// which the transcript names but does not record.
type nftStep struct {
	what string
	do   func(d *NFT) error
	edit func(c nftConn) error
}

func nftAdd(a Attachment) nftStep {
	return nftStep{what: "Add " + a.Owner.ContainerID, do: func(d *NFT) error { return d.Add(a) }}
}

func nftRemove(a Attachment) nftStep {
	return nftStep{what: "Remove " + a.Owner.ContainerID, do: func(d *NFT) error { return d.Remove(a) }}
}

func nftCheck(a Attachment) nftStep {
	return nftStep{what: "Check " + a.Owner.ContainerID, do: func(d *NFT) error { return d.Check(a) }}
}

func byHand(what string, fn func(c nftConn) error) nftStep {
	return nftStep{what: "by hand: " + what, edit: fn}
}

// elemOf is a's element in set that has key (KeyText), for edits by hand.
func elemOf(t testing.TB, a Attachment, set, key string) portplan.Elem {
	t.Helper()
	for _, e := range portplan.PlanNFT(a) {
		if e.Set() == set && e.KeyText() == key {
			return e
		}
	}
	t.Fatalf("%s has no element %s in %s", a.Owner.ContainerID, key, set)
	return portplan.Elem{}
}

type nftScenario struct {
	name  string // testdata/nft/<name>.golden
	about string
	steps []nftStep
	// race, when set, creates the table (as another ADD would) just
	// before the first transaction that creates it.
	race func(c nftConn) error
}

// The attachments of the scenarios.
var (
	// c1: both families, a wildcard and a host-address mapping, snat.
	nftC1 = testAttachment("c1", "10.88.0.5/16", "fd00:88::5/64", mapping("tcp", "", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353))
	// c1, retried after its addresses changed.
	nftC1Moved = testAttachment("c1", "10.88.0.7/16", "fd00:88::7/64", mapping("tcp", "", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353))
	// c1's index after a retry that added 8443 and was killed before
	// its datapath step: the union, more than the table holds.
	nftC1Union = testAttachment("c1", "10.88.0.5/16", "fd00:88::5/64", mapping("tcp", "", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353), mapping("tcp", "", 8443, 443))
	// c2: IPv4 only, masqAll.
	nftC2 = func() Attachment {
		a := testAttachment("c2", "10.88.0.6/16", "", mapping("tcp", "", 9090, 90))
		a.MasqAll = true
		return a
	}()
)

func nftScenarios(t testing.TB) []nftScenario {
	return []nftScenario{
		{name: "first-add", about: "the first ADD on a host finds no table and creates it whole, with its elements, in one transaction",
			steps: []nftStep{nftAdd(nftC1), nftCheck(nftC1)}},
		{name: "second-add", about: "a later ADD is one transaction adding its elements (the fast path: no read)",
			steps: []nftStep{nftAdd(nftC1), nftAdd(nftC2), nftCheck(nftC2)}},
		{name: "retry", about: "a retried ADD with the same addresses adds the same elements and changes nothing",
			steps: []nftStep{nftAdd(nftC1), nftAdd(nftC1)}},
		{name: "retry-moved", about: "a retried ADD after the container's addresses changed finds its keys taken, reads the sets and replaces its elements in one transaction (the old address's hairpin elements, other keys, stay)",
			steps: []nftStep{nftAdd(nftC1), nftAdd(nftC1Moved), nftCheck(nftC1Moved)}},
		{name: "create-race", about: "two first ADDs race: the one whose creation fails (the table exists) adds its elements to the other's table",
			race:  func(c nftConn) error { return c.Apply(nftTx{Create: true, Add: portplan.PlanNFT(nftC2)}) },
			steps: []nftStep{nftAdd(nftC1), nftCheck(nftC1), nftCheck(nftC2)}},
		{name: "remove", about: "Remove deletes exactly one attachment's elements in one transaction; a second Remove finds them gone and sends nothing",
			steps: []nftStep{nftAdd(nftC1), nftAdd(nftC2), nftRemove(nftC1), nftRemove(nftC1), nftCheck(nftC2), nftCheck(nftC1)}},
		{name: "remove-half-done", about: "Remove of a half-done attachment (its index names a mapping its datapath never got) deletes what is there",
			steps: []nftStep{nftAdd(nftC1), nftAdd(nftC2), nftRemove(nftC1Union), nftCheck(nftC2)}},
		{name: "remove-no-table", about: "Remove on a host with no table (an ADD killed before its datapath step) succeeds",
			steps: []nftStep{nftRemove(nftC1)}},
		{name: "check-missing", about: "Check names the first element missing, and a missing table",
			steps: []nftStep{nftCheck(nftC1), nftAdd(nftC1),
				byHand("nft delete element inet berth-portmap hairpin4 { 10.88.0.0/16 . 10.88.0.5 }", func(c nftConn) error {
					return c.Apply(nftTx{Del: []portplan.Elem{elemOf(t, nftC1, "hairpin4", "10.88.0.0/16 . 10.88.0.5")}})
				}),
				nftCheck(nftC1)}},
		{name: "check-wrong-target", about: "Check names a map element that leads elsewhere",
			steps: []nftStep{nftAdd(nftC1),
				byHand("the map any4 sends tcp . 8080 to 10.88.0.9 . 80", func(c nftConn) error {
					e := elemOf(t, nftC1, "any4", "tcp . 8080")
					moved := e
					moved.Target = netip.MustParseAddrPort("10.88.0.9:80")
					return c.Apply(nftTx{Del: []portplan.Elem{e}, Add: []portplan.Elem{moved}})
				}),
				nftCheck(nftC1)}},
	}
}

// run plays sc over c and returns its transcript: each step, what it
// asked of the table and its outcome, then the table.
func (sc nftScenario) run(t testing.TB, c nftConn) string {
	t.Helper()
	var log strings.Builder
	log.WriteString("# " + sc.about + "\n")
	r := &recorder{c: c, log: &log, beforeCreate: sc.race}
	d := &NFT{with: func(fn func(c nftConn) error) error { return fn(r) }}
	for _, st := range sc.steps {
		log.WriteString("\n> " + st.what + "\n")
		if st.edit != nil {
			if err := st.edit(c); err != nil {
				t.Fatalf("%s: %s: %v", sc.name, st.what, err)
			}
			continue
		}
		err := st.do(d)
		res := "ok"
		if err != nil {
			res = err.Error()
		}
		log.WriteString("= " + res + "\n")
	}
	log.WriteString("\n-- table\n" + dumpTable(c))
	return log.String()
}

// golden compares got with testdata/nft/<name>.golden (rewriting it under
// -update, when write).
func golden(t *testing.T, name, got string, write bool) {
	t.Helper()
	path := filepath.Join("testdata", "nft", name+".golden")
	if *update && write {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to write it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs from %s:\n%s", name, path, diffLines(string(want), got))
	}
}

// diffLines shows the first line where want and got part, with context.
func diffLines(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(w) || i < len(g); i++ {
		if i < len(w) && i < len(g) && w[i] == g[i] {
			continue
		}
		from := max(0, i-3)
		var b strings.Builder
		for j := from; j < i; j++ {
			b.WriteString("  " + w[j] + "\n")
		}
		if i < len(w) {
			b.WriteString("- " + w[i] + "\n")
		}
		if i < len(g) {
			b.WriteString("+ " + g[i] + "\n")
		}
		return b.String() + "(got in full:)\n" + got
	}
	return ""
}

// The nftables datapath's scenarios over the fake: what each asks of the
// kernel, in nft's syntax, and what it leaves, as golden text.
func TestNFTScenarios(t *testing.T) {
	t.Parallel()
	for _, sc := range nftScenarios(t) {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			golden(t, sc.name, sc.run(t, &fakeNFT{}), true)
		})
	}
}

// What the kernel edge writes reads back as the same element, and what
// it reads (outside input: anyone may write into the table) never makes
// it panic.
func TestNFTElemBytes(t *testing.T) {
	t.Parallel()
	a := nftC1Union
	a.MasqAll = true
	for _, e := range portplan.PlanNFT(a) {
		_, f, k, ok := setNamed(e.Set())
		if !ok {
			t.Fatalf("no set %s", e.Set())
		}
		got, ok := decodeElem(f, k, encodeElem(e))
		if !ok || got != e {
			t.Errorf("%v reads back as %v (%v)", e, got, ok)
		}
	}
	// A range that is no prefix, and a protocol berth does not map, are
	// not berth's.
	_, f, _, _ := setNamed("hairpin4")
	if _, ok := decodeElem(f, portplan.SetHairpin, encodeElem(portplan.Elem{Kind: portplan.SetHairpin, Src: netip.MustParsePrefix("10.0.0.0/8"), Target: netip.MustParseAddrPort("10.0.0.1:0")})); !ok {
		t.Error("a hairpin element did not decode")
	}
	se := encodeElem(portplan.Elem{Kind: portplan.SetHairpin, Src: netip.MustParsePrefix("10.0.0.0/8"), Target: netip.MustParseAddrPort("10.0.0.1:0")})
	se.KeyEnd[3] = 0xfe
	if e, ok := decodeElem(f, portplan.SetHairpin, se); ok {
		t.Errorf("the range 10.0.0.0-10.255.255.254 decoded as %v", e)
	}
	_, f, _, _ = setNamed("any4")
	if e, ok := decodeElem(f, portplan.SetAny, encodeElem(portplan.Elem{Kind: portplan.SetAny, Proto: "icmp", HostPort: 1, Target: netip.MustParseAddrPort("10.0.0.1:1")})); ok {
		t.Errorf("protocol 0 decoded as %v", e)
	}
}

func FuzzNFTDecodeElem(f *testing.F) {
	for _, e := range portplan.PlanNFT(nftC1Union) {
		se := encodeElem(e)
		f.Add(e.Set(), se.Key, se.KeyEnd, se.Val)
	}
	f.Fuzz(func(t *testing.T, set string, key, keyEnd, val []byte) {
		_, fam, k, ok := setNamed(set)
		if !ok {
			return
		}
		e, ok := decodeElem(fam, k, nftables.SetElement{Key: key, KeyEnd: keyEnd, Val: val})
		if !ok {
			return
		}
		// What decodes is berth's form: it encodes and decodes back
		// to itself (padding aside).
		if back, ok := decodeElem(fam, k, encodeElem(e)); !ok || back != e {
			t.Fatalf("%v re-encoded reads back as %v (%v)", e, back, ok)
		}
		if e.Set() != set {
			t.Fatalf("an element of %s decoded as one of %s", set, e.Set())
		}
	})
}
