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
}

// Lease is one host's claim on one subnet of a network: where its VTEP is.
type Lease struct {
	Subnet netip.Prefix `json:"subnet"` // e.g. 10.244.3.0/24
	Host   string       `json:"host"`   // the node name, unique in the cluster
	VTEP   netip.Addr   `json:"vtep"`   // the host's underlay address
	MAC    string       `json:"mac"`    // the host's VXLAN device MAC, aa:bb:cc:dd:ee:ff
}

// ErrConflict is returned (wrapped) by EnsureNetwork when the stored config
// differs from the one asked for, and by Acquire when the network has no
// free subnet left.
var ErrConflict = errors.New("conflict with the stored state")

// ErrUnavailable is returned (wrapped) when the store cannot be reached.
var ErrUnavailable = errors.New("store unavailable")

// Store is one connection to the cluster state. It is safe for concurrent use.
type Store interface {
	// EnsureNetwork stores n when the store has no config for n.Name and
	// returns the stored config. When a different config is stored it
	// returns that config and an error wrapping ErrConflict.
	EnsureNetwork(ctx context.Context, n Network) (Network, error)

	// Acquire leases a subnet of network for want.Host, with want's VTEP and
	// MAC, and keeps the lease alive (renewing it well within ttl) until
	// the Hold is released or ctx ends. The subnet is, in order: the one
	// want.Host already holds, want.Subnet when set and free, else the
	// lowest free subnet of the network. Leases whose TTL ran out are free.
	Acquire(ctx context.Context, network string, want Lease, ttl time.Duration) (Hold, error)

	// Leases lists the live leases of network, sorted by subnet.
	Leases(ctx context.Context, network string) ([]Lease, error)

	// Changes signals, coalesced, whenever the leases of network may have
	// changed: a lease added, renewed with other values, deleted or
	// expired. It also signals once at the start and after every
	// reconnection, so a caller that re-lists on each signal never misses a
	// change. The channel is closed when ctx ends.
	Changes(ctx context.Context, network string) <-chan struct{}

	// Close releases the connection; Holds stop being renewed (their
	// leases then expire after their TTL).
	Close() error
}

// Hold is a lease being kept alive.
type Hold interface {
	Lease() Lease
	// Lost is closed when the lease can no longer be kept alive: it expired
	// in the store (an outage longer than the TTL) or was deleted. The
	// caller then calls Acquire again, asking for the same subnet.
	Lost() <-chan struct{}
	// Release stops renewing and deletes the lease from the store.
	Release(ctx context.Context) error
}
