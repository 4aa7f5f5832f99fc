package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// This file is the pure part shared by the backends that encodes and
// decodes: keys (or file names) of subnets, and the records read back,
// which are outside input and validated as such.

// SortLeases sorts ls by subnet, the order Leases promises.
func SortLeases(ls []Lease) {
	slices.SortFunc(ls, func(a, b Lease) int { return a.Subnet.Compare(b.Subnet) })
}

// SubnetKey encodes a subnet for a key or a file name: the '/' becomes sep
// ("10.244.3.0-24" in etcd, "10.244.3.0_24" in a file name).
func SubnetKey(p netip.Prefix, sep byte) string {
	return p.Addr().String() + string(sep) + strconv.Itoa(p.Bits())
}

// ParseSubnetKey is the inverse of SubnetKey; it accepts only what
// SubnetKey writes for a valid IPv4 subnet.
func ParseSubnetKey(s string, sep byte) (netip.Prefix, error) {
	i := strings.LastIndexByte(s, sep)
	if i < 0 {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: no %q separator", s, sep)
	}
	p, err := netip.ParsePrefix(s[:i] + "/" + s[i+1:])
	if err != nil || !p.Addr().Is4() || p != p.Masked() || SubnetKey(p, sep) != s {
		return netip.Prefix{}, fmt.Errorf("subnet key %q: not an IPv4 subnet", s)
	}
	return p, nil
}

// DecodeNetwork decodes and validates a stored network config.
func DecodeNetwork(b []byte) (Network, error) {
	var n Network
	if err := json.Unmarshal(b, &n); err != nil {
		return Network{}, fmt.Errorf("decode network config: %w", err)
	}
	if err := n.Validate(); err != nil {
		return Network{}, fmt.Errorf("stored %w", err)
	}
	return n, nil
}

// MaxRecordSize bounds a stored lease record, or a shared record: its
// attributes and room for the rest. A backend refuses a longer one before
// decoding it.
const MaxRecordSize = MaxAttrsSize + 4<<10

// CheckRecordSize refuses a stored lease record of subnet longer than
// MaxRecordSize.
func CheckRecordSize(n int, subnet netip.Prefix) error {
	if n > MaxRecordSize {
		return fmt.Errorf("stored lease of %s: %d bytes, more than the %d a lease record may take: %w", subnet, n, MaxRecordSize, ErrAttrsTooLarge)
	}
	return nil
}

// DecodeLease decodes and validates a stored lease read under the key of
// subnet, its attributes included.
func DecodeLease(b []byte, subnet netip.Prefix) (Lease, error) {
	if err := CheckRecordSize(len(b), subnet); err != nil {
		return Lease{}, err
	}
	var l Lease
	if err := json.Unmarshal(b, &l); err != nil {
		return Lease{}, fmt.Errorf("decode lease of %s: %w", subnet, err)
	}
	if err := CheckStoredLease(l, subnet); err != nil {
		return Lease{}, err
	}
	return l, nil
}

// CheckStoredLease validates a lease read back under the key of subnet:
// the value must name the same subnet.
func CheckStoredLease(l Lease, subnet netip.Prefix) error {
	if err := l.Validate(); err != nil {
		return fmt.Errorf("stored lease of %s: %w", subnet, err)
	}
	if l.Subnet != subnet {
		return fmt.Errorf("stored lease of %s: subnet %s differs from its key", subnet, l.Subnet)
	}
	return nil
}

// CheckStoredNetwork compares the config EnsureNetwork found stored with
// the one it was asked for: a difference wraps ErrConflict.
func CheckStoredNetwork(stored, want Network) error {
	if stored != want {
		return fmt.Errorf("overlay network %q: stored config %+v differs from %+v: %w", want.Name, stored, want, ErrConflict)
	}
	return nil
}

// sharedRecord is a shared record as stored: {"attrs":{…}}, or {} for a
// record without attributes. A backend that stores more beside it (the
// file store's revision) adds its own keys, which DecodeShared ignores.
type sharedRecord struct {
	Attrs Attrs `json:"attrs,omitzero"`
}

// EncodeShared is the stored form of a shared record holding a. More
// than MaxAttrsSize of attributes wraps ErrAttrsTooLarge.
func EncodeShared(a Attrs) ([]byte, error) {
	if a.Size() > MaxAttrsSize { // not from With or a decoder: they refuse it
		return nil, fmt.Errorf("shared record: attributes of %d bytes, more than the %d (64 KiB) a record may carry: %w", a.Size(), MaxAttrsSize, ErrAttrsTooLarge)
	}
	return json.Marshal(sharedRecord{Attrs: a})
}

// DecodeShared decodes and validates a stored shared record: a JSON
// object of at most MaxRecordSize bytes whose "attrs", when present, are
// attributes (Attrs.UnmarshalJSON). Other keys are ignored. It returns
// the attributes; the record's Rev is the caller's to set.
func DecodeShared(b []byte) (Attrs, error) {
	if len(b) > MaxRecordSize {
		return Attrs{}, fmt.Errorf("stored shared record: %d bytes, more than the %d such a record may take: %w", len(b), MaxRecordSize, ErrAttrsTooLarge)
	}
	if t := bytes.TrimSpace(b); len(t) == 0 || t[0] != '{' {
		return Attrs{}, errors.New("stored shared record: not a JSON object")
	}
	var r sharedRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return Attrs{}, fmt.Errorf("decode shared record: %w", err)
	}
	return r.Attrs, nil
}

// MaxLastHolderSize bounds a stored last-holder record: a subnet and a
// host name of at most 253 bytes, each escaped by JSON at worst to six.
const MaxLastHolderSize = 2 << 10

// DecodeLastHolder decodes and validates a stored last-holder record
// read under the key of subnet; its Rev is the caller's to set.
func DecodeLastHolder(b []byte, subnet netip.Prefix) (LastHolder, error) {
	if len(b) > MaxLastHolderSize {
		return LastHolder{}, fmt.Errorf("stored last holder of %s: %d bytes, more than the %d such a record may take", subnet, len(b), MaxLastHolderSize)
	}
	var h LastHolder
	if err := json.Unmarshal(b, &h); err != nil {
		return LastHolder{}, fmt.Errorf("decode last holder of %s: %w", subnet, err)
	}
	if err := ValidateHost(h.Host); err != nil {
		return LastHolder{}, fmt.Errorf("stored last holder of %s: %w", subnet, err)
	}
	if h.Subnet != subnet {
		return LastHolder{}, fmt.Errorf("stored last holder of %s: subnet %s differs from its key", subnet, h.Subnet)
	}
	return h, nil
}
