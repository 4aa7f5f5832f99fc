package natplan

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/berth-cni/berth/pkg/owner"
)

// Limits of what a tag stores. Kernel comments hold at most 255 bytes
// (NFT_USERDATA_MAXLEN 256 with the NUL; xt_comment the same), and the nft
// tool refuses to read back a comment over 128 bytes, so that "nft list
// ruleset > f; nft -f f" keeps working: every nftables comment berth writes
// fits in 128 bytes, every iptables comment in 255.
const (
	MaxIfName = 15 // IFNAMSIZ-1

	// maxStoredID is the longest container ID stored as is (escaped
	// length). Runtimes use 64 hex digits; longer IDs (CNI allows any
	// length, berth's config up to 256) are shortened by shorten.
	maxStoredID = 64
	// maxStoredNet is the longest network name stored as is, so that
	// "berth net=<name> fam=ip6" fits in 128 bytes.
	maxStoredNet = 110

	hashLen = 16 // hex digits of sha256 in names and shortened values
)

// StoredOwner returns o as List reports it: a container ID whose escaped
// form is longer than 64 bytes is kept as its first bytes, "~" and 16 hex
// digits of its SHA-256. StoredOwner(StoredOwner(o)) == StoredOwner(o), and
// Delete, Check and Ensure accept either form. GC compares the owners List
// returns with StoredOwner of the attachments it keeps.
func StoredOwner(o owner.Owner) owner.Owner {
	o.ContainerID = shorten(o.ContainerID, maxStoredID)
	return o
}

// storedNetwork is the network name as written into comments.
func storedNetwork(network string) string {
	return shorten(network, maxStoredNet)
}

// netHash is the fixed-length part of every per-network kernel name: 16 hex
// digits of the SHA-256 of the stored network name. Kernel names are an API
// once released: never change this.
func netHash(network string) string {
	sum := sha256.Sum256([]byte(storedNetwork(network)))
	return hex.EncodeToString(sum[:])[:hashLen]
}

// shorten returns s when its escaped form fits in max bytes, else a prefix
// of s, "~" and hashLen hex digits of SHA-256(s), which fits in max. The
// result of shorten fits, so shorten is idempotent.
func shorten(s string, max int) string {
	if len(escape(s)) <= max {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	keep, n := 0, 0
	for keep < len(s) {
		w := len(escape(s[keep : keep+1]))
		if n+w > max-1-hashLen {
			break
		}
		n += w
		keep++
	}
	return s[:keep] + "~" + hex.EncodeToString(sum[:])[:hashLen]
}

// Tag is what berth writes into a kernel comment: a set element, an
// iptables rule or an nftables rule. Its text form is "berth" followed by
// space-separated key=value fields, values escaped (see escape):
//
//	berth p=16 if=eth0 id=0123abcd…           nftables set element
//	berth net=mynet p=16 if=eth0 id=0123abcd… iptables POSTROUTING rule
//	berth net=mynet fam=ip                     nftables rule
//	berth net=mynet                            iptables network chain rule
type Tag struct {
	Network     string // net=: stored network name; "" when the object implies it
	Family      string // fam=: "ip" or "ip6" (nftables rules)
	Bits        int    // p=: the container's subnet length; -1 when absent
	IfName      string // if=
	ContainerID string // id=: stored container ID
}

const tagWord = "berth"

// OwnerTag is the tag of one masqueraded address; network is "" where the
// object implies it (an nftables set element of the network's set).
func OwnerTag(network string, e Entry) Tag {
	if network != "" {
		network = storedNetwork(network)
	}
	return Tag{Network: network, Bits: e.Addr.Bits(), IfName: e.Owner.IfName, ContainerID: e.Owner.ContainerID}
}

// NetworkTag is the tag of a network's rules and chains.
func NetworkTag(network, family string) Tag {
	return Tag{Network: storedNetwork(network), Family: family, Bits: -1}
}

// String renders t; ParseTag(t.String()) == t for every t ParseTag returns.
func (t Tag) String() string {
	var b strings.Builder
	b.WriteString(tagWord)
	field := func(k, v string) {
		if v != "" {
			b.WriteString(" " + k + "=" + escape(v))
		}
	}
	field("net", t.Network)
	field("fam", t.Family)
	if t.Bits >= 0 {
		field("p", strconv.Itoa(t.Bits))
	}
	field("if", t.IfName)
	field("id", t.ContainerID)
	return b.String()
}

// HasOwner reports whether t names an attachment (an address tag).
func (t Tag) HasOwner() bool {
	return t.Bits >= 0 && t.IfName != "" && t.ContainerID != ""
}

// ParseTag reads a comment found in the kernel. It is outside input (anyone
// with CAP_NET_ADMIN can write comments): it rejects anything malformed and
// ignores unknown keys so that a newer berth may add some.
func ParseTag(s string) (Tag, error) {
	t := Tag{Bits: -1}
	rest, ok := strings.CutPrefix(s, tagWord)
	if !ok || (rest != "" && rest[0] != ' ') {
		return t, errors.New("not a berth tag")
	}
	seen := map[string]bool{}
	for rest != "" {
		field, after, more := strings.Cut(rest[1:], " ")
		rest = ""
		if more {
			rest = " " + after
		}
		k, raw, ok := strings.Cut(field, "=")
		if !ok || k == "" || raw == "" {
			return t, fmt.Errorf("berth tag field %q is not key=value", field)
		}
		if seen[k] {
			return t, fmt.Errorf("berth tag repeats %q", k)
		}
		seen[k] = true
		v, err := unescape(raw)
		if err != nil {
			return t, fmt.Errorf("berth tag field %q: %w", k, err)
		}
		switch k {
		case "net":
			t.Network = v
		case "fam":
			if v != "ip" && v != "ip6" {
				return t, fmt.Errorf("berth tag family %q is not ip or ip6", v)
			}
			t.Family = v
		case "p":
			n, err := strconv.Atoi(v)
			if err != nil || n < 0 || n > 128 || strconv.Itoa(n) != v {
				return t, fmt.Errorf("berth tag prefix length %q is not 0 to 128", v)
			}
			t.Bits = n
		case "if":
			if len(v) > MaxIfName {
				return t, fmt.Errorf("berth tag interface %q is longer than %d bytes", v, MaxIfName)
			}
			t.IfName = v
		case "id":
			t.ContainerID = v
		}
	}
	return t, nil
}

// escape keeps letters, digits and "-._~" and writes every other byte as
// %XX, so that a tag never holds a space, a quote or a backslash (iptables
// quoting) and splits unambiguously.
func escape(s string) string {
	n := 0
	for i := 0; i < len(s); i++ {
		if !plain(s[i]) {
			n++
		}
	}
	if n == 0 {
		return s
	}
	const hexDigits = "0123456789ABCDEF"
	b := make([]byte, 0, len(s)+2*n)
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plain(c) {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hexDigits[c>>4], hexDigits[c&15])
	}
	return string(b)
}

// unescape reverses escape, strictly: a byte escape would have kept must not
// be escaped and a byte it would have escaped must not appear raw, so every
// value has one spelling.
func unescape(s string) (string, error) {
	var b []byte
	for i := 0; i < len(s); i++ {
		c := s[i]
		if plain(c) {
			b = append(b, c)
			continue
		}
		if c != '%' || i+2 >= len(s) {
			return "", fmt.Errorf("bad byte %q at %d", c, i)
		}
		v, err := strconv.ParseUint(s[i+1:i+3], 16, 8)
		if err != nil || plain(byte(v)) || strings.ToUpper(s[i+1:i+3]) != s[i+1:i+3] {
			return "", fmt.Errorf("bad escape %q at %d", s[i:i+3], i)
		}
		b = append(b, byte(v))
		i += 2
	}
	return string(b), nil
}

func plain(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
