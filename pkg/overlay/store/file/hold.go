package file

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

type fileHold struct {
	s      *fileStore
	d      string
	subnet netip.Prefix // the lease's, fixed
	host   string
	holder string
	ttl    time.Duration

	mu    sync.Mutex // serialises Update
	lease store.Lease

	lost        chan struct{} // closed by renewLoop only
	release     chan struct{}
	releaseOnce sync.Once
	done        chan struct{} // renewLoop returned
}

func (h *fileHold) Lost() <-chan struct{} { return h.lost }

func (h *fileHold) Lease() store.Lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lease
}

// Update rewrites the lease file with the attributes fn returns and the
// next revision if it is still this Hold's and live, keeping its expiry.
//
// Equivalent: flock $dir/$network/lock (bump rev, rewrite leases/$subnet.json with the new attrs)
func (h *fileHold) Update(ctx context.Context, fn func(store.Attrs) (store.Attrs, error)) (store.Lease, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	what := fmt.Sprintf("update the attributes of the lease of %s for %q", h.subnet, h.host)
	select {
	case <-h.done:
		return h.lease, fmt.Errorf("%s: the lease is no longer kept alive (lost, released, or its context or store ended): %w", what, store.ErrLost)
	default:
	}
	attrs, err := fn(h.lease.Attrs)
	if err != nil {
		return h.lease, err
	}
	if attrs == h.lease.Attrs {
		return h.lease, nil
	}
	rev, err := locked(ctx, h.d, func() (int64, error) {
		path := leasePath(h.d, h.subnet)
		f, ok, rerr := readLeaseFile(path, h.subnet)
		switch {
		case rerr != nil:
			return 0, rerr
		case !ok || f.tombstone() || f.Holder != h.holder || f.expired(time.Now()):
			return 0, fmt.Errorf("%s is gone, expired or another holder's: %w", path, store.ErrLost)
		}
		rev, berr := bumpRev(h.d)
		if berr != nil {
			return 0, berr
		}
		f.Attrs, f.Lease.Rev = attrs, rev
		return rev, writeLease(h.d, f)
	})
	if err != nil {
		return h.lease, fmt.Errorf("%s: %w", what, err)
	}
	h.lease.Attrs, h.lease.Rev = attrs, rev
	return h.lease, nil
}

// renewLoop rewrites the expiry every ttl/3 until Release, ctx's end, the
// store's Close or the loss of the lease. A failed renewal is retried at
// the next tick; failures for a whole ttl are a loss, as the lease may
// have expired and been taken meanwhile.
func (h *fileHold) renewLoop(ctx context.Context) {
	defer h.s.t.Done()
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
		case <-h.s.t.Context().Done():
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
// and live, keeping its revision: a renewal is no write of the lease.
// lost is true when it is gone, taken or expired (an expired lease is
// swept, leaving its tombstone: the Hold's owner acquires anew).
func (h *fileHold) renew(ctx context.Context) (lost bool, err error) {
	return locked(ctx, h.d, func() (bool, error) {
		path := leasePath(h.d, h.subnet)
		f, ok, rerr := readLeaseFile(path, h.subnet)
		now := time.Now()
		switch {
		case rerr != nil:
			return false, rerr
		case !ok || f.tombstone() || f.Holder != h.holder:
			return true, nil
		case f.expired(now):
			_, err := bury(h.d, f, now)
			return true, err
		}
		f.Expires = now.Add(h.ttl).UnixMilli()
		return false, writeLease(h.d, f)
	})
}

// Release stops the renewals and replaces the lease file by its tombstone
// if it is still this Hold's. Releasing twice is not an error.
func (h *fileHold) Release(ctx context.Context) error {
	h.releaseOnce.Do(func() { close(h.release) })
	<-h.done
	_, err := locked(ctx, h.d, func() (struct{}, error) {
		path := leasePath(h.d, h.subnet)
		f, ok, rerr := readLeaseFile(path, h.subnet)
		if rerr != nil || !ok || f.tombstone() || f.Holder != h.holder {
			return struct{}{}, rerr
		}
		_, err := bury(h.d, f, time.Now())
		return struct{}{}, err
	})
	if err != nil {
		return fmt.Errorf("release lease of %s for %q: %w", h.subnet, h.host, err)
	}
	return nil
}
