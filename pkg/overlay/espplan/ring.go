// Package espplan plans the encrypted overlay: the network's key ring and
// its rotation, the key and SPI of every host pair, direction and ring key,
// and the security associations a host's kernel is to hold. Package esp
// installs them; the agent reads and writes the store.
//
// The scheme (README.md, "Encryption"): every host pair and direction has
// its own AES-GCM key per ring key, derived with HKDF-SHA256 from the ring
// key and both hosts' identities, and its own SPI, so no two security
// associations share a key and nonce space. A host installs receive SAs
// for every key of the ring and publishes how far it has (State.Rx); a
// sender switches to a newer key, per peer, only once that peer says it
// can receive it, so a rotation loses no packet.
//
// It is pure: plain values in, plain values out; secrets never appear in
// what it prints.
package espplan

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// KeySize is a ring key's length: 128 bits from crypto/rand.
const KeySize = 16

// MaxKeys bounds the ring. A key stays while some host still transmits
// with it (State.Tx); past MaxKeys the oldest goes regardless, and a host
// that never moved on loses its traffic (it is reported late already).
const MaxKeys = 8

// Key is one key of the ring.
type Key struct {
	Epoch   uint32    `json:"epoch"`   // 1 for the first key, then each new key's is the newest's + 1
	Secret  []byte    `json:"secret"`  // KeySize random bytes (base64 in JSON)
	Created time.Time `json:"created"` // when the rotator made it
}

// String names the key without its secret.
func (k Key) String() string {
	return fmt.Sprintf("key %d (created %s)", k.Epoch, k.Created.UTC().Format(time.RFC3339))
}

// Ring is the network's keys, oldest first: every host receives with each
// of them, and transmits with the newest its peer can receive.
type Ring struct {
	Keys []Key `json:"keys"`
}

// RingAttr holds the ring in the network's shared record.
var RingAttr = store.Attribute[Ring]{Name: "esp.ring", Version: 1}

// Validate checks a ring as read from the store: 1 to MaxKeys keys of
// KeySize bytes, epochs rising by one, none 0.
func (r Ring) Validate() error {
	if len(r.Keys) == 0 || len(r.Keys) > MaxKeys {
		return fmt.Errorf("key ring: %d keys: must hold 1 to %d", len(r.Keys), MaxKeys)
	}
	for i, k := range r.Keys {
		switch {
		case len(k.Secret) != KeySize:
			return fmt.Errorf("key ring: key %d: %d bytes: must be %d", k.Epoch, len(k.Secret), KeySize)
		case i == 0 && k.Epoch == 0:
			return errors.New("key ring: epoch 0: epochs start at 1")
		case i > 0 && k.Epoch != r.Keys[i-1].Epoch+1:
			return fmt.Errorf("key ring: epoch %d after %d: epochs rise by one", k.Epoch, r.Keys[i-1].Epoch)
		}
	}
	return nil
}

// Newest is the ring's newest key; ok is false for an empty ring.
func (r Ring) Newest() (k Key, ok bool) {
	if len(r.Keys) == 0 {
		return Key{}, false
	}
	return r.Keys[len(r.Keys)-1], true
}

// Key is the ring's key of epoch e.
func (r Ring) Key(e uint32) (Key, bool) {
	i := slices.IndexFunc(r.Keys, func(k Key) bool { return k.Epoch == e })
	if i < 0 {
		return Key{}, false
	}
	return r.Keys[i], true
}

// Epochs lists the ring's epochs, oldest first.
func (r Ring) Epochs() []uint32 {
	out := make([]uint32, len(r.Keys))
	for i, k := range r.Keys {
		out[i] = k.Epoch
	}
	return out
}

// String describes the ring without its secrets.
func (r Ring) String() string {
	if len(r.Keys) == 0 {
		return "empty key ring"
	}
	n, _ := r.Newest()
	return fmt.Sprintf("key ring of %d keys, epochs %d–%d, newest created %s", len(r.Keys), r.Keys[0].Epoch, n.Epoch, n.Created.UTC().Format(time.RFC3339))
}

// Rotation says when the rotator changes the ring.
type Rotation struct {
	Every time.Duration // a new key when the newest is this old
	// Grace keeps a key the hosts have moved off for this long after
	// its successor was made: packets encrypted just before a switch
	// still find their receive SA.
	Grace time.Duration
}

// DefaultGrace is Rotation.Grace for a rotation every d: a tenth of it,
// between 1 s and 5 min.
func DefaultGrace(d time.Duration) time.Duration {
	return min(max(d/10, time.Second), 5*time.Minute)
}

// NextRing is the ring the rotator should store at now, and whether it
// differs from r: a first key when r is empty; a new key (epoch newest+1,
// secret from newSecret) when the newest is Every old; without the keys
// below minTx (the oldest epoch any live host transmits with; 0 when none
// transmits) whose successor is older than Grace, always keeping the
// newest two; and never more than MaxKeys.
func NextRing(r Ring, now time.Time, rot Rotation, minTx uint32, newSecret func() ([]byte, error)) (Ring, bool, error) {
	keys := slices.Clone(r.Keys)
	changed := false
	newest, ok := r.Newest()
	if !ok || now.Sub(newest.Created) >= rot.Every {
		if newest.Epoch == math.MaxUint32 {
			return r, false, errors.New("key ring: epoch 4294967295 is the last: store a new ring (remove the network's esp.ring)")
		}
		s, err := newSecret()
		if err != nil {
			return r, false, fmt.Errorf("key ring: new key: %w", err)
		}
		if len(s) != KeySize {
			return r, false, fmt.Errorf("key ring: new key of %d bytes: must be %d", len(s), KeySize)
		}
		keys = append(keys, Key{Epoch: newest.Epoch + 1, Secret: s, Created: now})
		changed = true
	}
	if minTx == 0 {
		minTx = keys[len(keys)-1].Epoch
	}
	for len(keys) > 2 && keys[0].Epoch < minTx && now.Sub(keys[1].Created) >= rot.Grace {
		keys, changed = keys[1:], true
	}
	for len(keys) > MaxKeys {
		keys, changed = keys[1:], true
	}
	return Ring{Keys: keys}, changed, nil
}

// Due reports whether NextRing would change r at now (a key to make or to
// drop), without making a secret.
func Due(r Ring, now time.Time, rot Rotation, minTx uint32) bool {
	_, changed, err := NextRing(r, now, rot, minTx, func() ([]byte, error) { return make([]byte, KeySize), nil })
	return changed || err != nil
}

// State is what a host publishes in its lease of the encrypted overlay.
type State struct {
	// Rx: the host has receive SAs, from every peer its kernel holds,
	// for every ring key up to this epoch (0: none yet). A peer
	// transmits to it with no newer key.
	Rx uint32 `json:"rx"`
	// Tx is the oldest epoch it transmits with to any peer (0: it
	// transmits to none): the rotator keeps that key.
	Tx uint32 `json:"tx"`
	// Gen changes whenever the host's transmit SAs were made afresh (its
	// agent found none in the kernel, after a reboot say, or had to put
	// one back): their sequence numbers start again, which a peer's
	// receive SA, its replay window far ahead, refuses. A peer that sees
	// a new Gen makes its receive SAs from the host again (ResetFrom).
	Gen uint32 `json:"gen,omitempty"`
}

// StateAttr holds a host's State in its lease.
var StateAttr = store.Attribute[State]{Name: "esp.state", Version: 1}
