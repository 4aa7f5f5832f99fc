// Package file is the store.Store backend on a directory shared by
// several hosts on one machine (network namespaces, processes): a file per
// network config, per subnet lease and per network shared record, changed
// under flock(2), expiry by the wall clock, a revision counter per
// network; watched by inotify(7) where the directory is local, else
// polled. It touches only files under the directory it is given, which
// hold secrets (the shared record holds the encrypted overlay's key
// ring): it creates its directories 0700 and its files 0600.
package file

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/internal/tracker"
	"github.com/berth-cni/berth/pkg/state"
)

// The file backend keeps, under its directory:
//
//	<network>/network.json              the store.Network
//	<network>/leases/<a.b.c.d_len>.json one fileLease per subnet ever leased: a lease or its tombstone
//	<network>/shared.json               the network's shared record and its revision (shared.go)
//	<network>/rev                       the network's revision counter, decimal (rev.go)
//	<network>/lock                      flock(2) held around every read-modify-write
//
// Modes: every directory the store makes is 0700 (dirMode), and
// EnsureNetwork takes group and other access away from a network's
// directories made wider by an older berth; every file is 0600: written
// by state.WriteAtomic, whose temp file os.CreateTemp makes 0600 before
// it is renamed into place, and the lock opened 0600 by pkg/lock. The
// directory given to New is the caller's: made 0700 when missing, left
// as it is otherwise.
//
// Every write is a temp file renamed over the old one, so readers that do
// not lock (Watch) see whole files. Expiry times are wall-clock unix
// milliseconds: the hosts sharing the directory share the machine's clock.
//
// Every write of a lease (a claim, an attribute update, a release, the
// sweep of an expired lease) takes the next revision from the counter
// and records it in the file; a renewal rewrites the expiry only. A
// deleted lease leaves a tombstone, its last record marked with the
// revision of its deletion, so that a watcher can place the deletion
// among the other writes (a missing file says neither when nor what);
// the next claim of the subnet overwrites it. Readers other than Watch
// skip tombstones, and to a berth that predates them a tombstone is a
// lease that has expired.
//
// The tombstone is also what the store remembers of the subnet's last
// holder (store.LastHolder, for the choice of a subnet): its host, and
// its deletion's revision, the time it left in the network's order. So
// the history costs no file and no write of its own, and is one record
// per subnet ever leased; a sweep buries leases in the order they
// expired, so that their revisions keep it.

const (
	// dirMode is the mode of the directories the store makes.
	dirMode = 0o700
	// filePoll is how often a polling Watch rereads the leases.
	filePoll = 200 * time.Millisecond
	// fileLockWait bounds the wait for the lock when ctx has no deadline.
	fileLockWait = 10 * time.Second
)

// fileLease is a lease file: the store.Lease, who holds it and until when,
// and the revisions of its writes.
type fileLease struct {
	store.Lease
	// Holder is a random token of the Hold that wrote the file: a Hold
	// whose file carries another token was taken over, even by the same
	// host (an agent restarted while its old lease was still live).
	Holder string `json:"holder"`
	// Expires is in unix milliseconds; a tombstone's is the time of the
	// deletion, so that it is expired to every reader.
	Expires int64 `json:"expires"`
	// Revision is the lease's Rev (which JSON skips in store.Lease): the
	// revision of its last write; 0 in a file written before revisions.
	Revision int64 `json:"rev,omitempty"`
	// DeletedRev, when not 0, makes the record a tombstone: the lease was
	// deleted (released or swept) at this revision.
	DeletedRev int64 `json:"deleted,omitempty"`
}

func (f fileLease) expired(now time.Time) bool { return now.UnixMilli() >= f.Expires }

// tombstone reports whether the record is a deleted lease's.
func (f fileLease) tombstone() bool { return f.DeletedRev != 0 }

// rev is the revision of the record's last write: the deletion's for a
// tombstone, else the lease's.
func (f fileLease) rev() int64 { return max(f.Revision, f.DeletedRev) }

type fileStore struct {
	dir  string
	opts Options
	t    *tracker.Tracker // renewers and watchers

	stats stats
}

// stats count what this store's watchers read, for the tests: that a
// watcher reads the directory once per snapshot, not per event.
type stats struct {
	scans     atomic.Int64 // listings of a leases directory by a watcher
	reads     atomic.Int64 // lease files a watcher read one by one
	inotifies atomic.Int64 // watches that followed inotify events
	polls     atomic.Int64 // watches that polled
}

// Options are the choices of NewWithOptions; the zero Options are New's.
type Options struct {
	// Poll makes Watch poll the leases every 200 ms even where the
	// directory is on a local file system and inotify would tell of every
	// change; on a shared one (NFS, SMB, FUSE, 9P, …), where inotify does
	// not see other machines' writes, it polls regardless.
	Poll bool
}

// New returns a store.Store on the directory dir, for several hosts (network
// namespaces, processes) on one machine. It creates dir if missing.
func New(dir string) (store.Store, error) { return NewWithOptions(dir, Options{}) }

// NewWithOptions is New with the choices of o.
func NewWithOptions(dir string, o Options) (store.Store, error) {
	if dir == "" {
		return nil, errors.New("file store: a directory is required")
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	return &fileStore{dir: dir, opts: o, t: tracker.New()}, nil
}

// netDir returns the directory of network, after checking that the name
// cannot escape s.dir.
func (s *fileStore) netDir(network string) (string, error) {
	if err := config.ValidateNetworkName(network); err != nil {
		return "", fmt.Errorf("overlay network: %w", err)
	}
	return filepath.Join(s.dir, network), nil
}

// locked runs fn under the flock of the network directory d, which must
// exist. A lock not taken in time is store.ErrUnavailable.
//
// Equivalent: flock $dir/$network/lock $fn
func locked[T any](ctx context.Context, d string, fn func() (T, error)) (T, error) {
	wait := fileLockWait
	if dl, ok := ctx.Deadline(); ok {
		wait = max(time.Until(dl), time.Millisecond)
	}
	var v T
	l, err := lock.AcquireFile(filepath.Join(d, "lock"), wait)
	if errors.Is(err, lock.ErrTimeout) {
		return v, fmt.Errorf("%w: %w", store.ErrUnavailable, err)
	}
	if err != nil {
		return v, err
	}
	v, err = fn()
	if uerr := l.Unlock(); uerr != nil {
		err = errors.Join(err, fmt.Errorf("unlock %s: %w", d, uerr))
	}
	return v, err
}

func (s *fileStore) EnsureNetwork(ctx context.Context, n store.Network) (store.Network, error) {
	if err := n.Validate(); err != nil {
		return store.Network{}, err
	}
	d, err := s.netDir(n.Name)
	if err != nil {
		return store.Network{}, err
	}
	if err = makeNetDir(d); err != nil {
		return store.Network{}, fmt.Errorf("overlay network %q: %w", n.Name, err)
	}
	stored, err := locked(ctx, d, func() (store.Network, error) { return storeNetwork(d, n) })
	if err != nil {
		return store.Network{}, err
	}
	return stored, store.CheckStoredNetwork(stored, n)
}

// makeNetDir makes the network directory d and its leases directory,
// 0700, and takes group and other access away from them where an older
// berth made them 0755.
//
// Equivalent: mkdir -p -m 0700 $dir/$network/leases && chmod go= $dir/$network $dir/$network/leases
func makeNetDir(d string) error {
	leases := filepath.Join(d, "leases")
	if err := os.MkdirAll(leases, dirMode); err != nil {
		return err
	}
	for _, p := range []string{d, leases} {
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if perm := fi.Mode().Perm(); perm&^dirMode != 0 {
			if err := os.Chmod(p, perm&dirMode); err != nil {
				return err
			}
		}
	}
	return nil
}

// storeNetwork writes n to <d>/network.json unless a config is there, and
// returns the stored one. The caller holds the lock.
func storeNetwork(d string, n store.Network) (store.Network, error) {
	stored, ok, err := readNetwork(d)
	if err != nil || ok {
		return stored, err
	}
	b, err := json.Marshal(n)
	if err != nil {
		return store.Network{}, err
	}
	return n, state.WriteAtomic(filepath.Join(d, "network.json"), b)
}

// readNetwork reads <d>/network.json; ok is false when there is none.
func readNetwork(d string) (n store.Network, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(d, "network.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return store.Network{}, false, nil
	}
	if err != nil {
		return store.Network{}, false, err
	}
	n, err = store.DecodeNetwork(b)
	if err != nil {
		return store.Network{}, false, fmt.Errorf("%s: %w", filepath.Join(d, "network.json"), err)
	}
	return n, true, nil
}

func leasePath(d string, subnet netip.Prefix) string {
	return filepath.Join(d, "leases", store.SubnetKey(subnet, '_')+".json")
}

// readLeaseFile reads one lease file; ok is false when there is none. It
// reads no more than a lease record may take, and one byte to tell.
func readLeaseFile(path string, subnet netip.Prefix) (f fileLease, ok bool, err error) {
	b, err := readAtMost(path, store.MaxRecordSize+1)
	if errors.Is(err, fs.ErrNotExist) {
		return fileLease{}, false, nil
	}
	if err != nil {
		return fileLease{}, false, err
	}
	f, err = decodeFileLease(b, subnet)
	if err != nil {
		return fileLease{}, false, fmt.Errorf("%s: %w", path, err)
	}
	return f, true, nil
}

func readAtMost(path string, n int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// decodeFileLease decodes and validates a lease file of subnet.
func decodeFileLease(b []byte, subnet netip.Prefix) (fileLease, error) {
	if err := store.CheckRecordSize(len(b), subnet); err != nil {
		return fileLease{}, err
	}
	var f fileLease
	if err := json.Unmarshal(b, &f); err != nil {
		return fileLease{}, fmt.Errorf("decode lease of %s: %w", subnet, err)
	}
	if err := store.CheckStoredLease(f.Lease, subnet); err != nil {
		return fileLease{}, err
	}
	if f.Holder == "" || f.Expires <= 0 {
		return fileLease{}, fmt.Errorf("stored lease of %s: holder %q, expires %d: both are required", subnet, f.Holder, f.Expires)
	}
	if f.Revision < 0 || f.DeletedRev < 0 || f.tombstone() && f.DeletedRev <= f.Revision {
		return fileLease{}, fmt.Errorf("stored lease of %s: rev %d, deleted %d: revisions are positive and a deletion comes after the write", subnet, f.Revision, f.DeletedRev)
	}
	f.Lease.Rev = f.Revision
	return f, nil
}

// readLeases reads the lease files of the network directory d, tombstones
// included.
func readLeases(d string) ([]fileLease, error) {
	ents, err := os.ReadDir(filepath.Join(d, "leases"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []fileLease
	for _, e := range ents {
		subnet, ok, err := leaseFileName(d, e.Name())
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		f, ok, err := readLeaseFile(filepath.Join(d, "leases", e.Name()), subnet)
		switch {
		case err != nil:
			return nil, err
		case ok: // else deleted since ReadDir
			out = append(out, f)
		}
	}
	return out, nil
}

// leaseFileName returns the subnet of a name in the leases directory of
// d; ok is false for a temp file of a write in flight.
func leaseFileName(d, name string) (subnet netip.Prefix, ok bool, err error) {
	if strings.HasPrefix(name, ".") {
		return netip.Prefix{}, false, nil
	}
	subnet, err = store.ParseSubnetKey(strings.TrimSuffix(name, ".json"), '_')
	if err != nil || !strings.HasSuffix(name, ".json") {
		return netip.Prefix{}, false, fmt.Errorf("%s: not a lease file name", filepath.Join(d, "leases", name))
	}
	return subnet, true, nil
}

// sweep reads the lease files of d and replaces each expired lease by its
// tombstone, a write with a revision of its own; it returns the records
// as they are then. The caller holds the lock.
func sweep(d string, now time.Time) ([]fileLease, error) {
	recs, err := readLeases(d)
	if err != nil {
		return nil, err
	}
	var expired []int
	for i, f := range recs {
		if !f.tombstone() && f.expired(now) {
			expired = append(expired, i)
		}
	}
	// In the order they expired: the tombstones' revisions date the
	// holders' leaving (PickSubnet hands out last the subnet left
	// longest ago).
	slices.SortStableFunc(expired, func(a, b int) int { return cmp.Compare(recs[a].Expires, recs[b].Expires) })
	for _, i := range expired {
		if recs[i], err = bury(d, recs[i], now); err != nil {
			return nil, err
		}
	}
	return recs, nil
}

// liveOf returns the records of recs that are leases, not tombstones; a
// sweep leaves no expired lease among them.
func liveOf(recs []fileLease) []fileLease {
	var out []fileLease
	for _, f := range recs {
		if !f.tombstone() {
			out = append(out, f)
		}
	}
	return out
}

// pastOf returns the last holders of the subnets of recs whose lease is
// gone: a tombstone's host, at its deletion's revision.
func pastOf(recs []fileLease) []store.LastHolder {
	var out []store.LastHolder
	for _, f := range recs {
		if f.tombstone() {
			out = append(out, store.LastHolder{Subnet: f.Subnet, Host: f.Host, Rev: f.DeletedRev})
		}
	}
	return out
}

func leasesOf(files []fileLease) []store.Lease {
	ls := make([]store.Lease, len(files))
	for i, f := range files {
		ls[i] = f.Lease
	}
	store.SortLeases(ls)
	return ls
}

// writeLease writes the record f, its Revision that of f.Lease.
func writeLease(d string, f fileLease) error {
	f.Revision = f.Lease.Rev
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return state.WriteAtomic(leasePath(d, f.Subnet), b)
}

func (s *fileStore) Leases(ctx context.Context, network string) ([]store.Lease, error) {
	d, err := s.netDir(network)
	if err != nil {
		return nil, err
	}
	var recs []fileLease
	if _, err = os.Stat(d); err == nil {
		recs, err = locked(ctx, d, func() ([]fileLease, error) { return sweep(d, time.Now()) })
	} else if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("leases of overlay network %q: %w", network, err)
	}
	return leasesOf(liveOf(recs)), nil
}

func (s *fileStore) Acquire(ctx context.Context, network string, want store.Lease, ttl time.Duration) (store.Hold, error) {
	if err := store.ValidateAcquire(want, ttl); err != nil {
		return nil, err
	}
	d, err := s.netDir(network)
	if err != nil {
		return nil, err
	}
	if !s.t.Add() {
		return nil, errors.New("file store is closed")
	}
	h := &fileHold{
		s:       s,
		d:       d,
		host:    want.Host,
		ttl:     ttl,
		holder:  newToken(),
		lost:    make(chan struct{}),
		release: make(chan struct{}),
		done:    make(chan struct{}),
	}
	h.lease, err = locked(ctx, d, func() (store.Lease, error) { return claimFile(d, want, h.holder, ttl) })
	h.subnet = h.lease.Subnet
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("no config stored (EnsureNetwork first): %w", err)
	}
	if err != nil {
		s.t.Done()
		return nil, fmt.Errorf("acquire a subnet of overlay network %q for %q: %w", network, want.Host, err)
	}
	go h.renewLoop(ctx)
	return h, nil
}

// claimFile picks a subnet for want among the live leases of the network
// directory d, given the last holders of the others (the tombstones), and
// writes its lease file for holder. The caller holds the lock.
func claimFile(d string, want store.Lease, holder string, ttl time.Duration) (store.Lease, error) {
	n, ok, err := readNetwork(d)
	if err != nil {
		return store.Lease{}, err
	}
	if !ok {
		return store.Lease{}, errors.New("no config stored (EnsureNetwork first)")
	}
	now := time.Now()
	recs, err := sweep(d, now)
	if err != nil {
		return store.Lease{}, err
	}
	live := liveOf(recs)
	subnet, err := store.PickSubnet(n, want, leasesOf(live), pastOf(recs))
	if err != nil {
		return store.Lease{}, err
	}
	got := want
	got.Subnet = subnet
	for _, f := range live {
		if f.Subnet == subnet && f.Host == want.Host {
			// The host's own, taken over: keep the attributes want
			// does not know.
			if got.Attrs, err = store.MergeAttrs(f.Attrs, want.Attrs); err != nil {
				return store.Lease{}, err
			}
		}
	}
	if got.Rev, err = bumpRev(d); err != nil {
		return store.Lease{}, err
	}
	return got, writeLease(d, fileLease{Lease: got, Holder: holder, Expires: now.Add(ttl).UnixMilli()})
}

// newToken returns a random token naming one Hold.
func newToken() string {
	b := make([]byte, 8)
	rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// Close stops renewals and watchers; lease files stay until their
// expiry.
func (s *fileStore) Close() error {
	s.t.Stop(nil)
	return nil
}
