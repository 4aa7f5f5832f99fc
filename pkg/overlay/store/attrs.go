package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
)

// This file is a lease's attributes: what they may hold, how they are
// encoded, and the typed access a feature defines for its own.

// MaxAttrsSize bounds the encoded attributes of one lease, or of a
// network's shared record (the JSON object under "attrs", as stored):
// 64 KiB.
const MaxAttrsSize = 64 << 10

// MaxAttrName bounds an attribute's name.
const MaxAttrName = 63

// MaxAttrVersion is the highest version of an attribute's encoding.
const MaxAttrVersion = 1<<16 - 1

// ErrAttrsTooLarge is wrapped when the attributes of a lease, or of a
// shared record, would encode to more than MaxAttrsSize.
var ErrAttrsTooLarge = errors.New("attributes too large")

// ErrAttrVersion is wrapped by Attribute.Get when the stored attribute has
// another version than the one the reader knows.
var ErrAttrVersion = errors.New("attribute version not known")

// Attr is one attribute as stored: the version of its encoding and the
// data, raw JSON that only the feature owning the name reads.
type Attr struct {
	Version int
	Data    json.RawMessage
}

// wireAttr is an Attr as JSON: {"version":1,"data":…}.
type wireAttr struct {
	Version int             `json:"version"`
	Data    json.RawMessage `json:"data"`
}

// Attrs are the attributes of a lease: names, each with a versioned raw
// JSON value. An Attrs is an immutable value: With and Without return
// changed copies, and two Attrs are equal (==) when they hold the same
// names, versions and data. The zero Attrs holds none; a lease with none
// is stored without the "attrs" key, as leases were before attributes.
type Attrs struct {
	// enc is the canonical encoding: the JSON object of the names in
	// order, as encoding/json writes it (compact, HTML escaped); "" for
	// none.
	enc string
}

// ValidateAttrName checks an attribute name: [a-z][a-z0-9.-]*, at most
// MaxAttrName bytes.
func ValidateAttrName(name string) error {
	if name == "" || len(name) > MaxAttrName {
		return fmt.Errorf("attribute name %q: must be 1 to %d bytes", name, MaxAttrName)
	}
	for i := range len(name) {
		c := name[i]
		lower := c >= 'a' && c <= 'z'
		if i == 0 && !lower || !lower && !(c >= '0' && c <= '9') && c != '.' && c != '-' {
			return fmt.Errorf("attribute name %q: character %q at %d: names are [a-z][a-z0-9.-]*", name, c, i)
		}
	}
	return nil
}

func validateAttr(name string, a wireAttr) error {
	if err := ValidateAttrName(name); err != nil {
		return err
	}
	if a.Version < 1 || a.Version > MaxAttrVersion {
		return fmt.Errorf("attribute %q: version %d: must be between 1 and %d", name, a.Version, MaxAttrVersion)
	}
	if len(a.Data) == 0 || !json.Valid(a.Data) {
		return fmt.Errorf("attribute %q (version %d): data is not a JSON value", name, a.Version)
	}
	return nil
}

// encodeAttrs validates m and returns it as Attrs, refusing more than
// MaxAttrsSize encoded.
func encodeAttrs(m map[string]wireAttr) (Attrs, error) {
	for name, a := range m {
		if err := validateAttr(name, a); err != nil {
			return Attrs{}, err
		}
	}
	if len(m) == 0 {
		return Attrs{}, nil
	}
	b, err := json.Marshal(m) // names sorted, data compacted
	if err != nil {
		return Attrs{}, fmt.Errorf("encode lease attributes: %w", err)
	}
	if len(b) > MaxAttrsSize {
		return Attrs{}, fmt.Errorf("attributes %v: %d bytes encoded, more than the %d (64 KiB) a lease or a shared record may carry: %w",
			slices.Sorted(maps.Keys(m)), len(b), MaxAttrsSize, ErrAttrsTooLarge)
	}
	return Attrs{enc: string(b)}, nil
}

// decode returns the attributes as a map the caller may change.
func (a Attrs) decode() map[string]wireAttr {
	m := map[string]wireAttr{}
	if a.enc != "" {
		// enc was written by encodeAttrs: it decodes.
		if err := json.Unmarshal([]byte(a.enc), &m); err != nil {
			panic(fmt.Sprintf("store: attributes %q do not decode: %v", a.enc, err))
		}
	}
	return m
}

// IsZero reports whether a holds no attribute.
func (a Attrs) IsZero() bool { return a.enc == "" }

// Len is the number of attributes.
func (a Attrs) Len() int { return len(a.decode()) }

// Size is the encoded size in bytes, what MaxAttrsSize bounds.
func (a Attrs) Size() int { return len(a.enc) }

// Names returns the attribute names, sorted.
func (a Attrs) Names() []string { return slices.Sorted(maps.Keys(a.decode())) }

// Get returns the attribute name; ok is false when a has none of that
// name.
func (a Attrs) Get(name string) (Attr, bool) {
	w, ok := a.decode()[name]
	if !ok {
		return Attr{}, false
	}
	return Attr(w), true
}

// With returns a copy of a where name holds attr (added or replaced). The
// name, version and data are checked, and the result's size.
func (a Attrs) With(name string, attr Attr) (Attrs, error) {
	m := a.decode()
	m[name] = wireAttr(attr)
	return encodeAttrs(m)
}

// Without returns a copy of a without name.
func (a Attrs) Without(name string) Attrs {
	m := a.decode()
	if _, ok := m[name]; !ok {
		return a
	}
	delete(m, name)
	out, err := encodeAttrs(m)
	if err != nil { // fewer attributes than a valid a: cannot fail
		panic(fmt.Sprintf("store: attributes without %q: %v", name, err))
	}
	return out
}

// String is the JSON object, "{}" for none.
func (a Attrs) String() string {
	if a.enc == "" {
		return "{}"
	}
	return a.enc
}

// MarshalJSON writes the canonical JSON object.
func (a Attrs) MarshalJSON() ([]byte, error) { return []byte(a.String()), nil }

// UnmarshalJSON reads attributes as stored, validating them as outside
// input: a JSON object of names, each {"version":N,"data":…}, at most
// MaxAttrsSize in all. null is none. Unknown keys beside version and data
// are ignored.
func (a *Attrs) UnmarshalJSON(b []byte) error {
	if len(b) > MaxAttrsSize {
		return fmt.Errorf("attributes: %d bytes, more than the %d (64 KiB) a lease or a shared record may carry: %w", len(b), MaxAttrsSize, ErrAttrsTooLarge)
	}
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		*a = Attrs{}
		return nil
	}
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		return errors.New("attributes: not a JSON object")
	}
	var m map[string]wireAttr
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("attributes: %w", err)
	}
	out, err := encodeAttrs(m)
	if err != nil {
		return err
	}
	*a = out
	return nil
}

// MergeAttrs returns stored with the attributes of update added or
// replaced: the rule by which a host that does not know an attribute
// keeps it. Acquire applies it when it takes over the host's own lease.
func MergeAttrs(stored, update Attrs) (Attrs, error) {
	if stored.IsZero() {
		return update, nil
	}
	m := stored.decode()
	maps.Copy(m, update.decode())
	return encodeAttrs(m)
}

// Attribute is a feature's typed attribute: its name and the version of
// T's JSON encoding. A feature defines one in its own package,
//
//	var epochAttr = store.Attribute[Epoch]{Name: "esp.epoch", Version: 1}
//
// and reads and writes its value in a lease's Attrs with Get and Set,
// which leave every other attribute as it is.
type Attribute[T any] struct {
	Name    string
	Version int
}

// Get decodes the attribute from a. ok is false when a has none of that
// name. Another version than k.Version is an error wrapping
// ErrAttrVersion (a reader that knows several reads Attrs.Get itself); so
// is data that does not decode into T.
func (k Attribute[T]) Get(a Attrs) (v T, ok bool, err error) {
	attr, found := a.Get(k.Name)
	if !found {
		return v, false, nil
	}
	if attr.Version != k.Version {
		return v, false, fmt.Errorf("attribute %q: version %d stored, this host knows version %d: %w", k.Name, attr.Version, k.Version, ErrAttrVersion)
	}
	if err := json.Unmarshal(attr.Data, &v); err != nil {
		return v, false, fmt.Errorf("attribute %q (version %d): %w", k.Name, k.Version, err)
	}
	return v, true, nil
}

// Set returns a copy of a where the attribute holds v, encoded as JSON at
// k.Version.
func (k Attribute[T]) Set(a Attrs, v T) (Attrs, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return a, fmt.Errorf("attribute %q (version %d): %w", k.Name, k.Version, err)
	}
	return a.With(k.Name, Attr{Version: k.Version, Data: data})
}

// Delete returns a copy of a without the attribute.
func (k Attribute[T]) Delete(a Attrs) Attrs { return a.Without(k.Name) }
