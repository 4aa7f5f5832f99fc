package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

type etcdHold struct {
	s    *etcdStore
	keys netKeys
	key  string // the subnet key
	id   clientv3.LeaseID

	mu    sync.Mutex // serialises Update
	lease store.Lease

	ctx      context.Context // Acquire's
	cancel   context.CancelFunc
	ttl      time.Duration // as etcd granted it
	released atomic.Bool
	lost     chan struct{} // closed by run only
	done     chan struct{} // run returned
}

func (h *etcdHold) Lost() <-chan struct{} { return h.lost }

func (h *etcdHold) Lease() store.Lease {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lease
}

// Update writes the lease with the attributes fn returns, and its last
// holder, in one transaction that succeeds only while the key is attached
// to this Hold's etcd lease (and keeps it attached).
//
// Equivalent: etcdctl txn <<< 'lease("$key") = "$id"\n\nput --lease=$id $key $val\nput $histKey $histVal\n\n'
func (h *etcdHold) Update(ctx context.Context, fn func(store.Attrs) (store.Attrs, error)) (store.Lease, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	what := fmt.Sprintf("update the attributes of the lease of %s for %q", h.lease.Subnet, h.lease.Host)
	select {
	case <-h.lost:
		return h.lease, fmt.Errorf("%s: the lease was lost: %w", what, store.ErrLost)
	default:
	}
	if h.ended() {
		return h.lease, fmt.Errorf("%s: the lease is no longer kept alive (released, or its context or store ended): %w", what, store.ErrLost)
	}
	attrs, err := fn(h.lease.Attrs)
	if err != nil {
		return h.lease, err
	}
	if attrs == h.lease.Attrs {
		return h.lease, nil
	}
	next := h.lease
	next.Attrs = attrs
	val, err := json.Marshal(next)
	if err != nil {
		return h.lease, fmt.Errorf("%s: %w", what, err)
	}
	histKey, histVal, err := h.keys.lastHolder(next)
	if err != nil {
		return h.lease, fmt.Errorf("%s: %w", what, err)
	}
	rctx, cancel := h.s.request(ctx)
	defer cancel()
	resp, err := h.s.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.LeaseValue(h.key), "=", h.id)).
		Then(clientv3.OpPut(h.key, string(val), clientv3.WithLease(h.id)), clientv3.OpPut(histKey, histVal)).
		Commit()
	if err != nil {
		return h.lease, fail(ctx, what, err)
	}
	if !resp.Succeeded {
		return h.lease, fmt.Errorf("%s: %s is gone or another holder's: %w", what, h.key, store.ErrLost)
	}
	next.Rev = resp.Header.Revision // the put's ModRevision
	h.lease = next
	return next, nil
}

// run follows the keep-alive responses, checking on each that the key is
// still attached to this Hold's etcd lease. The client closes ka when it
// had no response within the TTL, and also when etcd answered that it
// does not know the lease, which a restarted etcd answers for a moment
// before it has recovered its leases (seen here under load). So a closed
// ka is a loss only once etcd says the lease is gone or the TTL since the
// last renewal has run out; until then run asks etcd again and resumes the
// keep-alive. Release, the Hold's context or the store's close end it
// without a loss.
func (h *etcdHold) run(kctx context.Context, ka <-chan *clientv3.LeaseKeepAliveResponse) {
	defer h.s.t.Done()
	defer close(h.done)
	defer h.cancel()
	renewed := time.Now()
	for {
		for range ka {
			renewed = time.Now()
			if h.taken(kctx) {
				h.cancel()
				close(h.lost)
				return
			}
		}
		if h.ended() {
			return
		}
		var ok bool
		if ka, ok = h.resume(kctx, renewed); !ok {
			if !h.ended() {
				close(h.lost)
			}
			return
		}
	}
}

// ended reports a Hold released, or whose context or store ended.
func (h *etcdHold) ended() bool {
	return h.released.Load() || h.ctx.Err() != nil || h.s.t.Context().Err() != nil
}

// resume asks etcd for the lease's remaining TTL until it answers or the
// TTL since renewed has passed, and restarts the keep-alive while the
// lease lives.
//
// Equivalent: etcdctl lease timetolive $id && etcdctl lease keep-alive $id
func (h *etcdHold) resume(ctx context.Context, renewed time.Time) (<-chan *clientv3.LeaseKeepAliveResponse, bool) {
	for time.Since(renewed) < h.ttl {
		rctx, cancel := h.s.request(ctx)
		resp, err := h.s.cli.TimeToLive(rctx, h.id)
		cancel()
		if err == nil && resp.TTL <= 0 {
			return nil, false // expired or revoked
		}
		if err == nil {
			if ka, err := h.s.cli.KeepAlive(ctx, h.id); err == nil {
				return ka, true
			}
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil, false
}

// taken reports whether the key is gone or attached to another etcd lease
// (deleted by hand, or taken over by a new incarnation of the same host).
// An unreachable store is not a loss: the keep-alive deadline decides that.
func (h *etcdHold) taken(ctx context.Context) bool {
	rctx, cancel := h.s.request(ctx)
	defer cancel()
	resp, err := h.s.cli.Get(rctx, h.key)
	if err != nil {
		return false
	}
	return len(resp.Kvs) == 0 || clientv3.LeaseID(resp.Kvs[0].Lease) != h.id
}

// Release stops the keep-alive, deletes the key if it is still this
// Hold's, dating its last holder to the deletion in the same
// transaction, and revokes the etcd lease. Releasing twice is not an
// error. It needs the store open.
//
// Equivalent: etcdctl txn <<< 'lease("$key") = "$id"\n\ndel $key\nput $histKey $histVal\n\n' && etcdctl lease revoke $id
func (h *etcdHold) Release(ctx context.Context) error {
	h.released.Store(true)
	h.cancel()
	<-h.done
	l := h.Lease()
	what := fmt.Sprintf("release lease of %s for %q", l.Subnet, l.Host)
	histKey, histVal, err := h.keys.lastHolder(l)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	// A key that is no longer this Hold's (lost, taken over, released
	// before) is left as it is, its history too.
	rctx, cancel := h.s.request(ctx)
	_, err = h.s.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.LeaseValue(h.key), "=", h.id)).
		Then(clientv3.OpDelete(h.key), clientv3.OpPut(histKey, histVal)).
		Commit()
	cancel()
	if err != nil {
		return fail(ctx, what, err)
	}
	rctx, cancel = h.s.request(ctx)
	defer cancel()
	_, err = h.s.cli.Revoke(rctx, h.id)
	if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil
	}
	return fail(ctx, what, err)
}
