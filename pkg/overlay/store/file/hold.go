package file

import (
	"context"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

type fileHold struct {
	s      *fileStore
	d      string
	lease  store.Lease
	holder string
	ttl    time.Duration

	lost        chan struct{} // closed by renewLoop only
	release     chan struct{}
	releaseOnce sync.Once
	done        chan struct{} // renewLoop returned
}

func (h *fileHold) Lease() store.Lease    { return h.lease }
func (h *fileHold) Lost() <-chan struct{} { return h.lost }

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
