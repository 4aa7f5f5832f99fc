package store

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/state"
)

// The file backend keeps, under its directory:
//
//	<network>/network.json            the Network
//	<network>/leases/<a.b.c.d_len>.json one fileLease per leased subnet
//	<network>/lock                    flock(2) held around every read-modify-write
//
// Every write is a temp file renamed over the old one, so readers that do
// not lock (Changes) see whole files. Expiry times are wall-clock unix
// milliseconds: the hosts sharing the directory share the machine's clock.

const (
	// filePoll is how often Changes rereads the leases.
	filePoll = 200 * time.Millisecond
	// fileLockWait bounds the wait for the lock when ctx has no deadline.
	fileLockWait = 10 * time.Second
)

// fileLease is a lease file: the Lease, who holds it and until when.
type fileLease struct {
	Lease
	// Holder is a random token of the Hold that wrote the file: a Hold
	// whose file carries another token was taken over, even by the same
	// host (an agent restarted while its old lease was still live).
	Holder  string `json:"holder"`
	Expires int64  `json:"expires"` // unix milliseconds
}

func (f fileLease) expired(now time.Time) bool { return now.UnixMilli() >= f.Expires }

type fileStore struct {
	dir string
	t   *tracker // renewers and pollers

	mu     sync.Mutex
	listed map[string]string // network → fingerprint of what Leases last returned
}

// NewFile returns a Store on the directory dir, for several hosts (network
// namespaces, processes) on one machine. It creates dir if missing.
func NewFile(dir string) (Store, error) {
	if dir == "" {
		return nil, errors.New("file store: a directory is required")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("file store: %w", err)
	}
	return &fileStore{dir: dir, t: newTracker(), listed: map[string]string{}}, nil
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
// exist. A lock not taken in time is ErrUnavailable.
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
		return v, fmt.Errorf("%w: %w", ErrUnavailable, err)
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

func (s *fileStore) EnsureNetwork(ctx context.Context, n Network) (Network, error) {
	if err := n.Validate(); err != nil {
		return Network{}, err
	}
	d, err := s.netDir(n.Name)
	if err != nil {
		return Network{}, err
	}
	if err = os.MkdirAll(filepath.Join(d, "leases"), 0o755); err != nil {
		return Network{}, fmt.Errorf("overlay network %q: %w", n.Name, err)
	}
	stored, err := locked(ctx, d, func() (Network, error) { return storeNetwork(d, n) })
	if err != nil {
		return Network{}, err
	}
	if stored != n {
		return stored, fmt.Errorf("overlay network %q: stored config %+v differs from %+v: %w", n.Name, stored, n, ErrConflict)
	}
	return stored, nil
}

// storeNetwork writes n to <d>/network.json unless a config is there, and
// returns the stored one. The caller holds the lock.
func storeNetwork(d string, n Network) (Network, error) {
	stored, ok, err := readNetwork(d)
	if err != nil || ok {
		return stored, err
	}
	b, err := json.Marshal(n)
	if err != nil {
		return Network{}, err
	}
	return n, state.WriteAtomic(filepath.Join(d, "network.json"), b)
}

// readNetwork reads <d>/network.json; ok is false when there is none.
func readNetwork(d string) (n Network, ok bool, err error) {
	b, err := os.ReadFile(filepath.Join(d, "network.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return Network{}, false, nil
	}
	if err != nil {
		return Network{}, false, err
	}
	n, err = decodeNetwork(b)
	if err != nil {
		return Network{}, false, fmt.Errorf("%s: %w", filepath.Join(d, "network.json"), err)
	}
	return n, true, nil
}

func leasePath(d string, subnet netip.Prefix) string {
	return filepath.Join(d, "leases", subnetKey(subnet, '_')+".json")
}

// readLeaseFile reads one lease file; ok is false when there is none.
func readLeaseFile(path string, subnet netip.Prefix) (f fileLease, ok bool, err error) {
	b, err := os.ReadFile(path)
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

// decodeFileLease decodes and validates a lease file of subnet.
func decodeFileLease(b []byte, subnet netip.Prefix) (fileLease, error) {
	var f fileLease
	if err := json.Unmarshal(b, &f); err != nil {
		return fileLease{}, fmt.Errorf("decode lease of %s: %w", subnet, err)
	}
	if err := checkStoredLease(f.Lease, subnet); err != nil {
		return fileLease{}, err
	}
	if f.Holder == "" || f.Expires <= 0 {
		return fileLease{}, fmt.Errorf("stored lease of %s: holder %q, expires %d: both are required", subnet, f.Holder, f.Expires)
	}
	return f, nil
}

// readLeases reads the lease files of the network directory d. Live ones
// are returned; the paths of expired ones too, for a caller holding the
// lock to delete.
func readLeases(d string, now time.Time) (live []fileLease, expired []string, err error) {
	ents, err := os.ReadDir(filepath.Join(d, "leases"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") { // a temp file of a write in flight
			continue
		}
		subnet, err := parseSubnetKey(strings.TrimSuffix(name, ".json"), '_')
		if err != nil || !strings.HasSuffix(name, ".json") {
			return nil, nil, fmt.Errorf("%s: not a lease file name", filepath.Join(d, "leases", name))
		}
		f, ok, err := readLeaseFile(filepath.Join(d, "leases", name), subnet)
		switch {
		case err != nil:
			return nil, nil, err
		case !ok: // deleted since ReadDir
		case f.expired(now):
			expired = append(expired, filepath.Join(d, "leases", name))
		default:
			live = append(live, f)
		}
	}
	return live, expired, nil
}

// sweep is readLeases plus the deletion of the expired files; the caller
// holds the lock.
func sweep(d string, now time.Time) ([]fileLease, error) {
	live, expired, err := readLeases(d, now)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, p := range expired {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return live, errors.Join(errs...)
}

func leasesOf(files []fileLease) []Lease {
	ls := make([]Lease, len(files))
	for i, f := range files {
		ls[i] = f.Lease
	}
	sortLeases(ls)
	return ls
}

func writeLease(d string, f fileLease) error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	return state.WriteAtomic(leasePath(d, f.Subnet), b)
}

func (s *fileStore) Leases(ctx context.Context, network string) ([]Lease, error) {
	d, err := s.netDir(network)
	if err != nil {
		return nil, err
	}
	var live []fileLease
	if _, err = os.Stat(d); err == nil {
		live, err = locked(ctx, d, func() ([]fileLease, error) { return sweep(d, time.Now()) })
	} else if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("leases of overlay network %q: %w", network, err)
	}
	ls := leasesOf(live)
	s.mu.Lock()
	s.listed[network] = fingerprintOf(ls)
	s.mu.Unlock()
	return ls, nil
}

func (s *fileStore) Acquire(ctx context.Context, network string, want Lease, ttl time.Duration) (Hold, error) {
	if err := errors.Join(validateTTL(ttl), validateHost(want.Host), want.validateEndpoint()); err != nil {
		return nil, err
	}
	d, err := s.netDir(network)
	if err != nil {
		return nil, err
	}
	if !s.t.add() {
		return nil, errors.New("file store is closed")
	}
	h := &fileHold{
		s:       s,
		d:       d,
		ttl:     ttl,
		holder:  newToken(),
		lost:    make(chan struct{}),
		release: make(chan struct{}),
		done:    make(chan struct{}),
	}
	h.lease, err = locked(ctx, d, func() (Lease, error) { return claimFile(d, want, h.holder, ttl) })
	if errors.Is(err, fs.ErrNotExist) {
		err = fmt.Errorf("no config stored (EnsureNetwork first): %w", err)
	}
	if err != nil {
		s.t.done()
		return nil, fmt.Errorf("acquire a subnet of overlay network %q for %q: %w", network, want.Host, err)
	}
	go h.renewLoop(ctx)
	return h, nil
}

// claimFile picks a subnet for want among the live leases of the network
// directory d and writes its lease file for holder. The caller holds the
// lock.
func claimFile(d string, want Lease, holder string, ttl time.Duration) (Lease, error) {
	n, ok, err := readNetwork(d)
	if err != nil {
		return Lease{}, err
	}
	if !ok {
		return Lease{}, errors.New("no config stored (EnsureNetwork first)")
	}
	now := time.Now()
	live, err := sweep(d, now)
	if err != nil {
		return Lease{}, err
	}
	subnet, err := pickSubnet(n, want, leasesOf(live))
	if err != nil {
		return Lease{}, err
	}
	got := want
	got.Subnet = subnet
	return got, writeLease(d, fileLease{Lease: got, Holder: holder, Expires: now.Add(ttl).UnixMilli()})
}

func (s *fileStore) Changes(ctx context.Context, network string) <-chan struct{} {
	ch := make(chan struct{}, 1)
	d, err := s.netDir(network)
	if err != nil || !s.t.add() {
		close(ch)
		return ch
	}
	// Each poll signals when the leases differ from the last poll's or
	// from what Leases last returned for the network: a change between
	// the start and the caller's first list, or one undone before the
	// next poll after the caller listed it, is still signalled.
	last := fingerprint(d)
	ch <- struct{}{}
	go func() {
		defer s.t.done()
		defer close(ch)
		t := time.NewTicker(filePoll)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.t.ctx.Done():
				return
			case <-t.C:
			}
			fp := fingerprint(d)
			s.mu.Lock()
			listed, ok := s.listed[network]
			s.mu.Unlock()
			if fp != last || ok && fp != listed {
				last = fp
				signal(ch)
			}
		}
	}()
	return ch
}

// fingerprint is the content of the live leases under d, or a marker that
// differs from every content when they cannot be read, so that the first
// good read after a bad one signals.
func fingerprint(d string) string {
	live, _, err := readLeases(d, time.Now())
	if err != nil {
		return "\x00" + err.Error()
	}
	return fingerprintOf(leasesOf(live))
}

// fingerprintOf is the content of leases (sorted, as leasesOf returns them).
func fingerprintOf(leases []Lease) string {
	b, err := json.Marshal(leases)
	if err != nil {
		return "\x00" + err.Error()
	}
	return string(b)
}

// newToken returns a random token naming one Hold.
func newToken() string {
	b := make([]byte, 8)
	rand.Read(b) // never fails on Linux
	return hex.EncodeToString(b)
}

// signal sends on a 1-buffered channel without blocking: signals coalesce.
func signal(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Close stops renewals and Changes pollers; lease files stay until their
// expiry.
func (s *fileStore) Close() error {
	s.t.stop(nil)
	return nil
}

type fileHold struct {
	s      *fileStore
	d      string
	lease  Lease
	holder string
	ttl    time.Duration

	lost        chan struct{} // closed by renewLoop only
	release     chan struct{}
	releaseOnce sync.Once
	done        chan struct{} // renewLoop returned
}

func (h *fileHold) Lease() Lease          { return h.lease }
func (h *fileHold) Lost() <-chan struct{} { return h.lost }

// renewLoop rewrites the expiry every ttl/3 until Release, ctx's end, the
// store's Close or the loss of the lease. A failed renewal is retried at
// the next tick; failures for a whole ttl are a loss, as the lease may
// have expired and been taken meanwhile.
func (h *fileHold) renewLoop(ctx context.Context) {
	defer h.s.t.done()
	defer close(h.done)
	t := time.NewTicker(h.ttl / 3)
	defer t.Stop()
	renewed := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.release:
			return
		case <-h.s.t.ctx.Done():
			return
		case <-t.C:
		}
		rctx, cancel := context.WithTimeout(ctx, h.ttl/3)
		lost, err := h.renew(rctx)
		cancel()
		if err == nil && !lost {
			renewed = time.Now()
		}
		if lost || time.Since(renewed) >= h.ttl {
			close(h.lost)
			return
		}
	}
}

// renew rewrites the expiry of the lease file if it is still this Hold's
// and live. lost is true when it is gone, taken or expired (an expired
// file is deleted: the Hold's owner acquires anew).
func (h *fileHold) renew(ctx context.Context) (lost bool, err error) {
	return locked(ctx, h.d, func() (bool, error) {
		path := leasePath(h.d, h.lease.Subnet)
		f, ok, rerr := readLeaseFile(path, h.lease.Subnet)
		now := time.Now()
		switch {
		case rerr != nil:
			return false, rerr
		case !ok || f.Holder != h.holder:
			return true, nil
		case f.expired(now):
			return true, os.Remove(path)
		}
		f.Expires = now.Add(h.ttl).UnixMilli()
		return false, writeLease(h.d, f)
	})
}

// Release stops the renewals and deletes the lease file if it is still
// this Hold's. Releasing twice is not an error.
func (h *fileHold) Release(ctx context.Context) error {
	h.releaseOnce.Do(func() { close(h.release) })
	<-h.done
	_, err := locked(ctx, h.d, func() (struct{}, error) {
		path := leasePath(h.d, h.lease.Subnet)
		f, ok, rerr := readLeaseFile(path, h.lease.Subnet)
		if rerr != nil || !ok || f.Holder != h.holder {
			return struct{}{}, rerr
		}
		return struct{}{}, os.Remove(path)
	})
	if err != nil {
		return fmt.Errorf("release lease of %s for %q: %w", h.lease.Subnet, h.lease.Host, err)
	}
	return nil
}
