package store

import (
	"errors"
	"strings"
	"testing"
)

func TestEncodeShared(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		attrs Attrs
		want  string
	}{
		{Attrs{}, `{}`},
		{mustWith(t, Attrs{}, "esp.ring", 1, ` {"keys": [1, 2]} `), `{"attrs":{"esp.ring":{"version":1,"data":{"keys":[1,2]}}}}`},
	} {
		b, err := EncodeShared(tc.attrs)
		if err != nil || string(b) != tc.want {
			t.Errorf("EncodeShared(%v) = %s, %v; want %s", tc.attrs, b, err, tc.want)
		}
		if got, err := DecodeShared(b); err != nil || got != tc.attrs {
			t.Errorf("DecodeShared(%s) = %v, %v; want %v", b, got, err, tc.attrs)
		}
	}
	// Attrs over the bound cannot be made through With or a decoder; a
	// value made otherwise is refused all the same.
	if _, err := EncodeShared(Attrs{enc: `{"big":{"version":1,"data":"` + strings.Repeat("x", MaxAttrsSize) + `"}}`}); !errors.Is(err, ErrAttrsTooLarge) {
		t.Errorf("EncodeShared over the bound: %v; want ErrAttrsTooLarge", err)
	}
}

func TestDecodeShared(t *testing.T) {
	t.Parallel()
	ring := mustWith(t, Attrs{}, "esp.ring", 1, `{"epoch":3}`)
	for _, tc := range []struct {
		in   string
		want Attrs
	}{
		{`{}`, Attrs{}},
		{` {"attrs":null} `, Attrs{}},
		{`{"attrs":{"esp.ring":{"version":1,"data":{"epoch":3}}},"later":"ignored"}`, ring},
	} {
		if got, err := DecodeShared([]byte(tc.in)); err != nil || got != tc.want {
			t.Errorf("DecodeShared(%s) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{
		``,
		`null`,
		`[]`,
		`"x"`,
		`{`,
		`{"attrs":[]}`,
		`{"attrs":{"Esp":{"version":1,"data":1}}}`,
		`{"attrs":{"esp.ring":{"version":0,"data":1}}}`,
		`{"pad":"` + strings.Repeat("x", MaxRecordSize) + `"}`,
	} {
		if got, err := DecodeShared([]byte(bad)); err == nil {
			t.Errorf("DecodeShared(%.60s) = %v; want an error", bad, got)
		}
	}
}

// FuzzDecodeShared: a stored shared record never panics the decoder, and
// what it accepts is within the bound, encodes again and survives a round
// trip.
func FuzzDecodeShared(f *testing.F) {
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"attrs":{"esp.ring":{"version":1,"data":{"keys":[{"epoch":1,"key":"AAAA"}]}}}}`))
	f.Add([]byte(`{"attrs":{"a":{"version":1,"data":1},"b":{"version":2,"data":"\u003c"}},"rev":7}`))
	f.Add([]byte(`{"attrs":{"A":{"version":0}}}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := DecodeShared(b)
		if err != nil {
			return
		}
		if a.Size() > MaxAttrsSize {
			t.Fatalf("accepted %d bytes of attributes", a.Size())
		}
		again, err := EncodeShared(a)
		if err != nil {
			t.Fatalf("accepted %v, which does not encode: %v", a, err)
		}
		if len(again) > MaxRecordSize {
			t.Fatalf("accepted %v, whose record of %d bytes is over the bound", a, len(again))
		}
		if a2, err := DecodeShared(again); err != nil || a2 != a {
			t.Fatalf("round trip of %v: %v, %v", a, a2, err)
		}
	})
}
