package store

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// epoch is a feature's attribute value, as a feature package defines one.
type epoch struct {
	N   int    `json:"n"`
	Key string `json:"key"`
}

var epochAttr = Attribute[epoch]{Name: "esp.epoch", Version: 2}

func mustWith(t *testing.T, a Attrs, name string, version int, data string) Attrs {
	t.Helper()
	out, err := a.With(name, Attr{Version: version, Data: json.RawMessage(data)})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestAttrName(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"a", "ack", "esp.epoch", "mesh-v2", "a0.b-c", strings.Repeat("a", MaxAttrName)} {
		if err := ValidateAttrName(ok); err != nil {
			t.Errorf("ValidateAttrName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "A", "0a", ".a", "-a", "a_b", "a b", "ä", "a/b", strings.Repeat("a", MaxAttrName+1)} {
		if err := ValidateAttrName(bad); err == nil {
			t.Errorf("ValidateAttrName(%q): no error", bad)
		}
	}
}

func TestAttrsValues(t *testing.T) {
	t.Parallel()
	var zero Attrs
	if !zero.IsZero() || zero.Len() != 0 || zero.String() != "{}" || len(zero.Names()) != 0 {
		t.Fatalf("zero Attrs: %v, len %d", zero, zero.Len())
	}
	a := mustWith(t, zero, "b", 1, ` { "x" : [1, 2] } `)
	a = mustWith(t, a, "a", 3, `"<tag>"`)
	// Canonical: names sorted, data compacted as encoding/json writes it.
	if got, want := a.String(), `{"a":{"version":3,"data":"\u003ctag\u003e"},"b":{"version":1,"data":{"x":[1,2]}}}`; got != want {
		t.Fatalf("encoding:\n%s\nwant\n%s", got, want)
	}
	if a.Size() != len(a.String()) || a.Len() != 2 || !slices.Equal(a.Names(), []string{"a", "b"}) {
		t.Fatalf("size %d, len %d, names %v", a.Size(), a.Len(), a.Names())
	}
	// Values: the same content in another order is equal.
	b := mustWith(t, mustWith(t, zero, "a", 3, `"<tag>"`), "b", 1, `{"x":[1,2]}`)
	if a != b {
		t.Fatalf("same attributes built in another order differ: %v vs %v", a, b)
	}
	if got, ok := a.Get("b"); !ok || got.Version != 1 || string(got.Data) != `{"x":[1,2]}` {
		t.Fatalf("Get(b) = %+v, %v", got, ok)
	}
	if _, ok := a.Get("c"); ok {
		t.Fatal("Get(c) found an attribute")
	}
	// With and Without leave their receiver alone.
	c := mustWith(t, a, "b", 2, `null`)
	if got, _ := a.Get("b"); got.Version != 1 {
		t.Fatal("With changed its receiver")
	}
	if got, _ := c.Get("b"); got.Version != 2 || string(got.Data) != "null" {
		t.Fatalf("replaced b = %+v", got)
	}
	if d := a.Without("a"); d.Len() != 1 || a.Len() != 2 {
		t.Fatal("Without")
	}
	if a.Without("nope") != a || a.Without("a").Without("b") != zero {
		t.Fatal("Without of an absent name, or of every name")
	}
	for name, attr := range map[string]Attr{
		"Bad":   {Version: 1, Data: json.RawMessage(`1`)},
		"v0":    {Version: 0, Data: json.RawMessage(`1`)},
		"vbig":  {Version: MaxAttrVersion + 1, Data: json.RawMessage(`1`)},
		"empty": {Version: 1},
		"junk":  {Version: 1, Data: json.RawMessage(`{"a":`)},
		"two":   {Version: 1, Data: json.RawMessage(`1 2`)},
	} {
		if _, err := zero.With(name, attr); err == nil {
			t.Errorf("With(%q, %+v): no error", name, attr)
		}
	}
}

func TestAttribute(t *testing.T) {
	t.Parallel()
	other := mustWith(t, Attrs{}, "ack", 1, `{"seen":[1,2,3]}`)
	a, err := epochAttr.Set(other, epoch{N: 7, Key: "k7"})
	if err != nil {
		t.Fatal(err)
	}
	if v, ok, err := epochAttr.Get(a); err != nil || !ok || v != (epoch{7, "k7"}) {
		t.Fatalf("Get = %+v, %v, %v", v, ok, err)
	}
	if ack, _ := a.Get("ack"); string(ack.Data) != `{"seen":[1,2,3]}` {
		t.Fatalf("Set changed another feature's attribute: %+v", ack)
	}
	if _, ok, err := epochAttr.Get(other); ok || err != nil {
		t.Fatalf("Get of an absent attribute = %v, %v; want not found, no error", ok, err)
	}
	older := Attribute[epoch]{Name: "esp.epoch", Version: 1}
	_, ok, err := older.Get(a)
	if ok || !errors.Is(err, ErrAttrVersion) || !strings.Contains(err.Error(), "version 2 stored, this host knows version 1") {
		t.Fatalf("Get of another version = %v, %v; want ErrAttrVersion naming both", ok, err)
	}
	wrongType := mustWith(t, Attrs{}, "esp.epoch", 2, `"a string"`)
	if _, ok, err := epochAttr.Get(wrongType); ok || err == nil {
		t.Fatalf("Get of data that is not an epoch = %v, %v", ok, err)
	}
	if d := epochAttr.Delete(a); d != other {
		t.Fatalf("Delete = %v; want %v", d, other)
	}
	if _, err := (Attribute[epoch]{Name: "No", Version: 1}).Set(Attrs{}, epoch{}); err == nil {
		t.Fatal("Set under an invalid name: no error")
	}
	if _, err := (Attribute[chan int]{Name: "ch", Version: 1}).Set(Attrs{}, nil); err == nil {
		t.Fatal("Set of a value JSON cannot encode: no error")
	}
}

func TestAttrsTooLarge(t *testing.T) {
	t.Parallel()
	big := `"` + strings.Repeat("x", MaxAttrsSize/2) + `"`
	a := mustWith(t, Attrs{}, "one", 1, big)
	_, err := a.With("two", Attr{Version: 1, Data: json.RawMessage(big)})
	if !errors.Is(err, ErrAttrsTooLarge) || !strings.Contains(err.Error(), "64 KiB") || !strings.Contains(err.Error(), "[one two]") {
		t.Fatalf("With over the bound: %v; want ErrAttrsTooLarge naming the bound and the attributes", err)
	}
	b := mustWith(t, Attrs{}, "two", 1, big)
	if _, err := MergeAttrs(a, b); !errors.Is(err, ErrAttrsTooLarge) {
		t.Fatalf("MergeAttrs over the bound: %v", err)
	}
	var back Attrs
	huge := `{"one":{"version":1,"data":"` + strings.Repeat("y", MaxAttrsSize) + `"}}`
	if err := json.Unmarshal([]byte(huge), &back); !errors.Is(err, ErrAttrsTooLarge) {
		t.Fatalf("decoding stored attributes over the bound: %v", err)
	}
}

func TestMergeAttrs(t *testing.T) {
	t.Parallel()
	stored := mustWith(t, mustWith(t, Attrs{}, "known", 1, `"old"`), "future", 9, `{"from":"a newer agent"}`)
	update := mustWith(t, Attrs{}, "known", 1, `"new"`)
	got, err := MergeAttrs(stored, update)
	if err != nil {
		t.Fatal(err)
	}
	want := mustWith(t, stored, "known", 1, `"new"`)
	if got != want {
		t.Fatalf("MergeAttrs = %v; want %v", got, want)
	}
	if got, _ := MergeAttrs(Attrs{}, update); got != update {
		t.Fatalf("MergeAttrs over none = %v", got)
	}
	if got, _ := MergeAttrs(stored, Attrs{}); got != stored {
		t.Fatalf("MergeAttrs of none = %v", got)
	}
}

// A lease without attributes is encoded as before attributes existed, and
// such a record decodes with none.
func TestLeaseWithoutAttrs(t *testing.T) {
	t.Parallel()
	const old = `{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`
	subnet := netip.MustParsePrefix("10.244.3.0/24")
	l, err := DecodeLease([]byte(old), subnet)
	if err != nil || !l.Attrs.IsZero() {
		t.Fatalf("DecodeLease(record without attrs) = %+v, %v", l, err)
	}
	if b, err := json.Marshal(l); err != nil || string(b) != old {
		t.Fatalf("encoding of a lease without attrs = %s, %v; want %s", b, err, old)
	}
	if l2, err := DecodeLease([]byte(strings.TrimSuffix(old, "}")+`,"attrs":null}`), subnet); err != nil || l2 != l {
		t.Fatalf("attrs null = %+v, %v", l2, err)
	}
	with, err := epochAttr.Set(Attrs{}, epoch{N: 1})
	if err != nil {
		t.Fatal(err)
	}
	l.Attrs = with
	b, err := json.Marshal(l)
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.TrimSuffix(old, "}") + `,"attrs":{"esp.epoch":{"version":2,"data":{"n":1,"key":""}}}}`; string(b) != want {
		t.Fatalf("encoding with attrs:\n%s\nwant\n%s", b, want)
	}
	if back, err := DecodeLease(b, subnet); err != nil || back != l {
		t.Fatalf("round trip = %+v, %v; want %+v", back, err, l)
	}
}

func TestDecodeLeaseAttrs(t *testing.T) {
	t.Parallel()
	subnet := netip.MustParsePrefix("10.244.3.0/24")
	const head = `{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","attrs":`
	for _, bad := range []string{
		`[]`,
		`"x"`,
		`1`,
		`{"Bad":{"version":1,"data":1}}`,
		`{"a":{"version":0,"data":1}}`,
		`{"a":{"version":65536,"data":1}}`,
		`{"a":{"version":1}}`,
		`{"a":{"version":"1","data":1}}`,
		`{"a":1}`,
		`{"a":null}`,
	} {
		if l, err := DecodeLease([]byte(head+bad+`}`), subnet); err == nil {
			t.Errorf("DecodeLease with attrs %s = %+v; want an error", bad, l)
		}
	}
	// Unknown keys in an attribute are ignored; a duplicate name keeps
	// the last, as encoding/json does.
	l, err := DecodeLease([]byte(head+`{"a":{"version":1,"data":1,"more":2},"a":{"version":2,"data":[]}}}`), subnet)
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Attrs.String(); got != `{"a":{"version":2,"data":[]}}` {
		t.Fatalf("attrs = %s", got)
	}
	long := []byte(head + `{"a":{"version":1,"data":"` + strings.Repeat(" ", MaxRecordSize) + `"}}}`)
	if _, err := DecodeLease(long, subnet); !errors.Is(err, ErrAttrsTooLarge) || !strings.Contains(err.Error(), "bytes") {
		t.Fatalf("an oversized record: %v", err)
	}
}

// FuzzAttrs: stored attributes never panic the decoder; what it accepts is
// within the bounds, canonical (encoding it again and decoding gives the
// same value) and every attribute in it reads back.
func FuzzAttrs(f *testing.F) {
	f.Add([]byte(`{"esp.epoch":{"version":2,"data":{"n":1,"key":""}}}`))
	f.Add([]byte(`{"a":{"version":1,"data":"\u003c"},"b-0.c":{"version":65535,"data":[1,{"x":null}]}}`))
	f.Add([]byte(`{"a":{"version":1,"data":1,"more":2},"a":{"version":2,"data":[]}}`))
	f.Add([]byte(`{"A":{"version":1,"data":1}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var a Attrs
		if err := json.Unmarshal(b, &a); err != nil {
			return
		}
		if a.Size() > MaxAttrsSize {
			t.Fatalf("accepted %d bytes", a.Size())
		}
		again, err := json.Marshal(a)
		if err != nil {
			t.Fatal(err)
		}
		var back Attrs
		if err := json.Unmarshal(again, &back); err != nil || back != a {
			t.Fatalf("round trip of %v: %v, %v", a, back, err)
		}
		for _, name := range a.Names() {
			attr, ok := a.Get(name)
			if !ok || ValidateAttrName(name) != nil || attr.Version < 1 || attr.Version > MaxAttrVersion || !json.Valid(attr.Data) {
				t.Fatalf("accepted attribute %q: %+v", name, attr)
			}
			if rebuilt, err := a.Without(name).With(name, attr); err != nil || rebuilt != a {
				t.Fatalf("rebuilding %q: %v, %v", name, rebuilt, err)
			}
		}
	})
}
