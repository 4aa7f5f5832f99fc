package hostport

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/hostport/portplan"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/state"
)

// Claim is one reservation: a key, its holder and where it leads. It is the
// content of the key's file, readable by `berth ports` without anything else.
type Claim struct {
	Proto         string         `json:"protocol"`
	HostIP        string         `json:"hostIP"` // "" for every address of both families
	HostPort      uint16         `json:"hostPort"`
	Network       string         `json:"network"`
	ContainerID   string         `json:"containerID"`
	IfName        string         `json:"ifName"`
	Targets       []netip.Prefix `json:"containerIPs"`
	ContainerPort uint16         `json:"containerPort"`
}

// Key is the claim's key.
func (c Claim) Key() Key {
	k := Key{Proto: c.Proto, Port: c.HostPort}
	if c.HostIP != "" {
		k.Addr, _ = netip.ParseAddr(c.HostIP)
	}
	return k
}

// Owner is the claim's holder.
func (c Claim) Owner() owner.Owner {
	return owner.Owner{Network: c.Network, ContainerID: c.ContainerID, IfName: c.IfName}
}

// HeldError is a claim refused because another attachment holds an
// overlapping key (code 101).
type HeldError struct {
	Want   Key
	Holder Claim
}

func (e *HeldError) Error() string {
	h := e.Holder
	var to []string
	for _, t := range h.Targets {
		to = append(to, netip.AddrPortFrom(t.Addr(), h.ContainerPort).String())
	}
	return fmt.Sprintf("host port %s is already held by container %s (network %q, interface %s, to %s) as %s: a host port is published by one container at a time",
		e.Want, h.ContainerID, h.Network, h.IfName, strings.Join(to, ", "), h.Key())
}

// Store is the host's reservations under one directory:
//
//	<dir>/lock                     the flock every change is made under
//	<dir>/ports/<proto>-<port>/<addr|any>   one Claim per held key
//	<dir>/owners/<hash>.json       one Attachment per holder (24 hex digits of owner.Hash)
//
// A holder's index is written before its claims and removed after them, so
// a plugin killed at any point leaves an index that names every claim it
// may have made: DEL and GC start from the index.
type Store struct {
	dir string
}

// Open returns the store under dir (validated by the caller).
func Open(dir string) Store { return Store{dir: dir} }

// Dir is the store's directory.
func (s Store) Dir() string { return s.dir }

// Lock takes the store's flock, creating the directory if needed. Every
// Claim and Release happens under it; reads for listing need not.
func (s Store) Lock(timeout time.Duration) (*lock.Lock, error) {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return nil, fmt.Errorf("portmap: create %s: %w", s.dir, err)
	}
	l, err := lock.AcquireFile(filepath.Join(s.dir, "lock"), timeout)
	if err != nil {
		return nil, fmt.Errorf("portmap: %w", err)
	}
	return l, nil
}

// ownerPath is o's index: owners/ and 24 hex digits of o's hash. The name
// is an API once released.
func (s Store) ownerPath(o owner.Owner) string {
	return filepath.Join(s.dir, "owners", o.Hash(24)+".json")
}

func (s Store) keyDir(k Key) string { return filepath.Join(s.dir, "ports", k.DirName()) }

// Conflict returns a *HeldError for the first key of a that another
// attachment holds, or nil. The caller holds the lock. It reads only the
// directories of a's own protocol-port pairs: its cost does not grow with
// the number of ports held on the host.
func (s Store) Conflict(a Attachment) error {
	for _, m := range a.Mappings {
		entries, err := os.ReadDir(s.keyDir(m.Key))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("portmap: read reservations: %w", err)
		}
		for _, e := range entries {
			addr, ok := portplan.ParseFileName(e.Name())
			if !ok {
				continue
			}
			held := Key{Proto: m.Proto, Addr: addr, Port: m.Port}
			if !held.Overlaps(m.Key) {
				continue
			}
			c, err := readClaim(filepath.Join(s.keyDir(m.Key), e.Name()))
			if err != nil {
				return err
			}
			if c.Owner() != a.Owner {
				return cnierr.WithCode(cnierr.CodePortHeld, &HeldError{Want: m.Key, Holder: c})
			}
		}
	}
	return nil
}

// Claim records a's keys as a's. The caller holds the lock and has checked
// Conflict. If a's owner already holds keys (a runtime retrying ADD), the
// index becomes the union, so DEL still frees all of them.
func (s Store) Claim(a Attachment) error {
	prev, found, err := s.Held(a.Owner)
	if err != nil {
		return err
	}
	if found {
		a.Mappings = unionMappings(prev.Mappings, a.Mappings)
	}
	if err := s.writeIndex(a); err != nil {
		return err
	}
	for _, m := range a.Mappings {
		c := Claim{Proto: m.Proto, HostPort: m.Port, Network: a.Owner.Network, ContainerID: a.Owner.ContainerID,
			IfName: a.Owner.IfName, ContainerPort: m.ContainerPort}
		v4, v6 := m.Families()
		for _, t := range a.Targets {
			if (t.Addr().Is4() && v4) || (t.Addr().Is6() && v6) {
				c.Targets = append(c.Targets, t)
			}
		}
		if m.Addr.IsValid() {
			c.HostIP = m.Addr.String()
		}
		b, err := json.Marshal(c)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(s.keyDir(m.Key), 0o700); err != nil {
			return fmt.Errorf("portmap: create reservation dir: %w", err)
		}
		if err := state.WriteAtomic(filepath.Join(s.keyDir(m.Key), m.FileName()), b); err != nil {
			return fmt.Errorf("portmap: reserve %s: %w", m.Key, err)
		}
	}
	return nil
}

func (s Store) writeIndex(a Attachment) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(s.ownerPath(a.Owner)), 0o700); err != nil {
		return fmt.Errorf("portmap: create owners dir: %w", err)
	}
	if err := state.WriteAtomic(s.ownerPath(a.Owner), b); err != nil {
		return fmt.Errorf("portmap: write index of %s: %w", a.Owner.ContainerID, err)
	}
	return nil
}

// Held returns what o holds; found is false if it holds nothing.
func (s Store) Held(o owner.Owner) (a Attachment, found bool, err error) {
	b, err := os.ReadFile(s.ownerPath(o))
	if errors.Is(err, fs.ErrNotExist) {
		return Attachment{}, false, nil
	}
	if err != nil {
		return Attachment{}, false, fmt.Errorf("portmap: read index: %w", err)
	}
	if err := json.Unmarshal(b, &a); err != nil {
		return Attachment{}, false, fmt.Errorf("portmap: decode index %s: %w", s.ownerPath(o), err)
	}
	return a, true, nil
}

// Release frees every key o holds, then o's index. Claims that name
// another holder are left alone (never free someone else's port). The
// caller holds the lock and has removed o's datapath state first.
func (s Store) Release(a Attachment) error {
	var errs []error
	for _, m := range a.Mappings {
		p := filepath.Join(s.keyDir(m.Key), m.FileName())
		c, err := readClaim(p)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if c.Owner() != a.Owner {
			continue
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("portmap: free %s: %w", m.Key, err))
			continue
		}
		// The protocol-port directory goes with its last claim; a
		// concurrent Claim holds the lock, so none is racing.
		os.Remove(s.keyDir(m.Key))
	}
	if len(errs) > 0 {
		return errors.Join(errs...)
	}
	if err := os.Remove(s.ownerPath(a.Owner)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("portmap: remove index: %w", err)
	}
	return nil
}

// Revert undoes a Claim of a by a holder that held before already: the
// keys a added are freed and the index is before again. The caller holds
// the lock.
func (s Store) Revert(before, a Attachment) error {
	// Claims first, index last: a crash in between leaves an index that
	// still names every claim.
	var errs []error
	for _, m := range a.Mappings {
		if slices.ContainsFunc(before.Mappings, func(b Mapping) bool { return b.Key == m.Key }) {
			continue
		}
		p := filepath.Join(s.keyDir(m.Key), m.FileName())
		if c, err := readClaim(p); err == nil && c.Owner() == a.Owner {
			errs = append(errs, os.Remove(p))
			os.Remove(s.keyDir(m.Key))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("portmap: revert reservations: %w", err)
	}
	return s.writeIndex(before)
}

// Claims lists every reservation on the host, sorted by protocol, port and
// address. Unreadable files are reported but do not hide the others.
func (s Store) Claims() ([]Claim, error) {
	root := filepath.Join(s.dir, "ports")
	dirs, err := os.ReadDir(root)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("portmap: list reservations: %w", err)
	}
	var out []Claim
	var errs []error
	for _, d := range dirs {
		if _, _, ok := portplan.ParseDirName(d.Name()); !ok || !d.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(root, d.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, f := range files {
			if _, ok := portplan.ParseFileName(f.Name()); !ok {
				continue
			}
			c, err := readClaim(filepath.Join(root, d.Name(), f.Name()))
			if err != nil {
				if !errors.Is(err, fs.ErrNotExist) { // freed meanwhile
					errs = append(errs, err)
				}
				continue
			}
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b Claim) int {
		if a.Proto != b.Proto {
			return strings.Compare(a.Proto, b.Proto)
		}
		if a.HostPort != b.HostPort {
			return int(a.HostPort) - int(b.HostPort)
		}
		return strings.Compare(a.HostIP, b.HostIP)
	})
	return out, errors.Join(errs...)
}

// Holders lists the index of every holder on the host.
func (s Store) Holders() ([]Attachment, error) {
	out, err := state.ReadJSONDir[Attachment](filepath.Join(s.dir, "owners"))
	if err != nil {
		err = fmt.Errorf("portmap: list holders: %w", err)
	}
	return out, err
}

func readClaim(path string) (Claim, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Claim{}, err
	}
	var c Claim
	if err := json.Unmarshal(b, &c); err != nil {
		return Claim{}, fmt.Errorf("portmap: decode reservation %s: %w", path, err)
	}
	return c, nil
}

// unionMappings is old plus the mappings of add not already in it; a
// mapping of add replaces one of old with the same key.
func unionMappings(old, add []Mapping) []Mapping {
	out := slices.Clone(add)
	for _, m := range old {
		if !slices.ContainsFunc(add, func(n Mapping) bool { return n.Key == m.Key }) {
			out = append(out, m)
		}
	}
	return out
}
