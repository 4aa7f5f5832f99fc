// Package store is the overlay's cluster state: one network config per
// overlay network and one subnet lease per host, behind the Store
// interface. This package holds the types, the interfaces and the pure
// parts every backend shares (validation, the choice of a subnet, key
// encoding, the decoding of what is read back); the backends are its
// subpackages: store/etcd (go.etcd.io/etcd/client/v3: leases with a TTL,
// watches) and store/file (a shared directory, for single-machine use),
// and store/storetest is the contract both pass. A Kubernetes API backend
// (node.spec.podCIDR plus annotations, as flannel's kube subnet manager
// does) fits the same interface and is future work.
//
// It is pure: no store client, netlink or nftables. The node agent
// (cmd/berth-overlayd) is the only user of a Store; the CNI plugin never
// talks to the store.
//
// # Attributes
//
// A Lease, a host's record in a network, carries besides its subnet, VTEP
// and MAC the attributes of the features that publish something per host
// (acknowledgements between agents, key epochs, the routing mesh), as
// flannel's BackendData does for its backends. The contract:
//
//   - An attribute is a name, [a-z][a-z0-9.-]* of at most 63 bytes, owned
//     by one feature, holding a version and raw JSON data. The feature
//     defines its typed attribute in its own package as an Attribute[T]
//     and reads and writes it with Get and Set; nothing else (the
//     backends, the subnet choice, the decoders) looks inside the data.
//   - Backends store the attributes and return them untouched (the data
//     compacted, as encoding/json writes it); Leases returns them as the
//     host last wrote them.
//   - Acquire publishes want.Attrs. When it takes over the host's own live
//     lease (a restarted agent), the stored attributes whose names
//     want.Attrs lacks are kept (MergeAttrs): a host never drops an
//     attribute it does not know, such as a newer version of its agent
//     wrote. Hold.Update changes the attributes in place (same subnet,
//     same TTL, one write); a feature changes its own there, leaving the
//     others as they are. A Watch sees another host's update as one
//     event carrying the lease with its new attributes.
//   - Version is that of the data's encoding. A reader that finds another
//     version than it knows gets ErrAttrVersion from Attribute.Get and
//     decides what that means (skip the feature for that host, or read an
//     older version through Attrs.Get).
//   - The encoded attributes of one lease are at most MaxAttrsSize
//     (64 KiB); more is refused with an error wrapping ErrAttrsTooLarge.
//   - Stored attributes are outside input: they are validated on read
//     like the rest of a lease, and a malformed one makes the record
//     corrupt. A record without attributes (as written before they
//     existed) decodes with none, and a lease with none is written
//     without the "attrs" key, as before.
//
// # The shared record
//
// Besides the leases, each network has one Shared record: attributes of
// the network as a whole, which every host reads and any host may write
// (the encrypted overlay's key ring, "esp.ring"). Its attributes follow
// the rules above, with the same MaxAttrsSize; UpdateShared changes them
// with a compare-and-swap on the record's revision, calling the
// feature's fn again on the newer record when another host wrote in
// between, so that two hosts changing their own attributes at once both
// stick. The record is never deleted and has no TTL. Its revisions are
// the network's, taken in the same order as the leases' writes, and a
// Watch carries it: in each snapshot, and as an event of its own when it
// changes.
package store

import (
	"context"
	"errors"
	"net/netip"
	"time"
)

// Network is the config of one overlay network, the same on every host.
// The first agent to start stores it; every later one compares its own
// flags with the stored copy and refuses to run on a mismatch.
type Network struct {
	Name      string       `json:"name"`
	CIDR      netip.Prefix `json:"cidr"`      // the cluster network, e.g. 10.244.0.0/16
	SubnetLen int          `json:"subnetLen"` // per-host subnet length, e.g. 24
	VNI       uint32       `json:"vni"`
	Port      uint16       `json:"port"` // VXLAN UDP destination port, 4789 by default
	// Encryption is how the hosts' VXLAN crosses the underlay: "" in the
	// clear, EncryptESP in ESP (package espplan). Every host must agree,
	// so it is part of the stored config.
	Encryption string `json:"encryption,omitempty"`
	// KeyRotation is how often an encrypted network's key ring gets a
	// new key (0 when not encrypted).
	KeyRotation time.Duration `json:"keyRotation,omitempty"`
}

// EncryptESP is Network.Encryption for ESP, AES-GCM with per host pair
// keys (espplan).
const EncryptESP = "esp"

// MinKeyRotation is the shortest KeyRotation: a rotation must leave the
// hosts time to acknowledge the new key before the next.
const MinKeyRotation = 10 * time.Second

// Encrypted reports whether n's VXLAN is encrypted.
func (n Network) Encrypted() bool { return n.Encryption == EncryptESP }

// Lease is one host's record in a network: its claim on one subnet,
// where its VTEP is, and the attributes its features publish. Leases are
// values: == compares every field, attributes included.
type Lease struct {
	Subnet netip.Prefix `json:"subnet"` // e.g. 10.244.3.0/24
	Host   string       `json:"host"`   // the node name, unique in the cluster
	VTEP   netip.Addr   `json:"vtep"`   // the host's underlay address
	MAC    string       `json:"mac"`    // the host's VXLAN device MAC, aa:bb:cc:dd:ee:ff
	Attrs  Attrs        `json:"attrs,omitzero"`
	// Rev is the store's revision of the lease's last write (its
	// subnet, VTEP, MAC or attributes; a renewal of its TTL is not a
	// write), set by the store on every lease it returns; a caller
	// leaves it 0. A network's revisions grow with every write to its
	// leases: a reader that has seen every change up to revision R knows
	// each lease as it was at R.
	Rev int64 `json:"-"`
}

// LastHolder is what a store remembers of a subnet after its lease is
// gone: the host that held it last, and when in the store's order. A
// backend keeps one per subnet ever leased, with no TTL, and writes it
// with every write of the lease (a claim, an attribute update, a
// release); PickSubnet reads them to give a freed subnet back to its
// last holder and to other hosts only last.
type LastHolder struct {
	Subnet netip.Prefix `json:"subnet"`
	Host   string       `json:"host"`
	// Rev is the store's revision of the last write of the holder's
	// lease: a larger Rev held the subnet later. A lease that expired
	// is dated by its last write where the store writes nothing at
	// expiry (etcd), by its removal where it does (the file store's
	// sweep). Revisions compare within one network; JSON skips it.
	Rev int64 `json:"-"`
}

// Shared is a network's record that every host reads and any host may
// update: attributes owned by features (the encrypted overlay's key
// ring), with the same rules and limits as a lease's. Rev is the store's
// revision of its last write; the zero Shared is a record never written.
type Shared struct {
	Attrs Attrs
	Rev   int64
}

// ErrConflict is returned (wrapped) by EnsureNetwork when the stored config
// differs from the one asked for, and by Acquire when the network has no
// free subnet left.
var ErrConflict = errors.New("conflict with the stored state")

// ErrUnavailable is returned (wrapped) when the store cannot be reached.
var ErrUnavailable = errors.New("store unavailable")

// ErrLost is returned (wrapped) by Hold.Update when the Hold no longer
// holds its lease: lost, taken over or released.
var ErrLost = errors.New("lease no longer held")

// Store is one connection to the cluster state. It is safe for concurrent use.
type Store interface {
	// EnsureNetwork stores n when the store has no config for n.Name and
	// returns the stored config. When a different config is stored it
	// returns that config and an error wrapping ErrConflict.
	EnsureNetwork(ctx context.Context, n Network) (Network, error)

	// Acquire leases a subnet of network for want.Host, with want's VTEP,
	// MAC and attributes, and keeps the lease alive (renewing it well
	// within ttl) until the Hold is released or ctx ends. Leases whose
	// TTL ran out are free. The subnet is, in order (PickSubnet):
	//
	//  1. the one want.Host holds (a restarted agent's live lease);
	//  2. want.Subnet, when it is one of the network's and free;
	//  3. a free subnet whose last holder was want.Host, the one it held
	//     most recently if several (a host whose lease expired in an
	//     outage, or that released it and came back);
	//  4. the lowest free subnet nobody has held, past the first;
	//  5. the free subnet whose last holder left longest ago, past the
	//     first.
	//
	// So a subnet freed by an expiry or a release goes back to its last
	// holder, and to another host only when no other is left. The store
	// remembers each subnet's last holder (LastHolder) with no TTL, in
	// the write of the lease. Taking over the host's own lease keeps the
	// attributes stored there that want lacks (MergeAttrs); a merge over
	// MaxAttrsSize fails with ErrAttrsTooLarge and changes nothing.
	Acquire(ctx context.Context, network string, want Lease, ttl time.Duration) (Hold, error)

	// Leases lists the live leases of network, sorted by subnet.
	Leases(ctx context.Context, network string) ([]Lease, error)

	// Shared reads network's shared record (the zero Shared when none was written).
	Shared(ctx context.Context, network string) (Shared, error)
	// UpdateShared sets network's shared record to fn's result, fn being
	// given the stored attributes; the write is a compare-and-swap on the
	// record's revision, and fn is called again on the newer record when
	// another host wrote in between, so no update is lost. When fn returns
	// its argument unchanged nothing is written. A result over MaxAttrsSize
	// fails with ErrAttrsTooLarge. The network must exist (EnsureNetwork).
	//
	// It returns the record as written, or as last read when nothing was
	// written; an error of fn is returned as it is. fn changes only what
	// its feature owns (Attribute.Set, Delete), so that the others stay,
	// and may be called several times: it acts on nothing but its
	// argument.
	UpdateShared(ctx context.Context, network string, fn func(Attrs) (Attrs, error)) (Shared, error)

	// Watch streams the changes of network's leases and of its shared
	// record as they happen: first a snapshot (Event.Reset, every live
	// lease and the shared record), then one event per change (a lease
	// written, deleted or expired; the shared record written) in
	// revision order, each carrying the lease or the record, so the
	// reader never lists the store again. After a gap it cannot fill (a
	// reconnection after a compaction, a broken watch, a file event the
	// kernel dropped) it sends a new snapshot. Revisions never go back
	// within one watch: each change's Rev is above the one before it,
	// whether it is a lease's or the shared record's, and a snapshot's is
	// not below it. A renewal of a lease's TTL is no event. A reader that
	// is slow delays the watch but loses nothing (a backend may fold a
	// backlog into one snapshot). The channel is closed when ctx ends or
	// the store is closed.
	Watch(ctx context.Context, network string) <-chan Event

	// Close releases the connection; Holds stop being renewed (their
	// leases then expire after their TTL).
	Close() error
}

// Event is one step of a Watch.
type Event struct {
	// Reset: Leases is every live lease of the network and Shared its
	// shared record (the zero Shared when none was written), as of Rev;
	// the reader replaces what it knows with them.
	Reset  bool
	Leases []Lease
	// Otherwise one change: Lease as written, or (Deleted) as it was
	// before it was deleted or expired; or, when Shared is not nil, the
	// shared record as written (Lease is then the zero Lease and Deleted
	// false; a record removed by hand is the zero Shared).
	Lease   Lease
	Deleted bool
	Shared  *Shared
	// Rev is the revision the event brings the reader to: after it the
	// reader knows every lease of the network, and its shared record, as
	// of Rev.
	Rev int64
}

// Hold is a lease being kept alive. It is safe for concurrent use.
type Hold interface {
	// Lease is the lease as held: as Acquire stored it, with the
	// attributes of the last Update, and the revision of that write.
	Lease() Lease
	// Update changes the attributes of the lease in place: fn gets the
	// attributes the lease holds and returns those it is to hold, and the
	// store is written once, keeping the subnet, VTEP, MAC and TTL (an
	// fn that returns them unchanged writes nothing). fn changes only what
	// its feature owns (Attribute.Set, Delete), so that the others stay.
	// Updates of one Hold are serialised. A Hold that lost its lease, or
	// was released, fails with ErrLost; an error of fn is returned as it
	// is, with nothing written. It returns the lease as now held.
	Update(ctx context.Context, fn func(Attrs) (Attrs, error)) (Lease, error)
	// Lost is closed when the lease can no longer be kept alive: it expired
	// in the store (an outage longer than the TTL) or was deleted. The
	// caller then calls Acquire again, asking for the same subnet.
	Lost() <-chan struct{}
	// Release stops renewing and deletes the lease from the store.
	Release(ctx context.Context) error
}
