package etcd

import (
	"context"
	"fmt"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// The shared record of a network is one key, <prefix>/<network>/shared,
// without an etcd lease: its value store.EncodeShared's JSON, its Rev its
// ModRevision. A key never written (or deleted by hand) is the zero
// store.Shared; UpdateShared's transaction compares the ModRevision it
// read (0 for none: the key must not exist) and puts the new value, else
// reads the newer one for the next round.

// decodeShared decodes the shared key as read under key: none is the
// zero store.Shared.
func decodeShared(key string, kvs []*mvccpb.KeyValue) (store.Shared, error) {
	if len(kvs) == 0 {
		return store.Shared{}, nil
	}
	attrs, err := store.DecodeShared(kvs[0].Value)
	if err != nil {
		return store.Shared{}, fmt.Errorf("%s: %w", key, err)
	}
	return store.Shared{Attrs: attrs, Rev: kvs[0].ModRevision}, nil
}

// Shared reads the shared record of network.
//
// Equivalent: etcdctl get $prefix/$network/shared
func (s *etcdStore) Shared(ctx context.Context, network string) (store.Shared, error) {
	k, err := s.keys(network)
	if err != nil {
		return store.Shared{}, err
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, k.shared)
	if err != nil {
		return store.Shared{}, fail(ctx, fmt.Sprintf("shared record of overlay network %q", network), err)
	}
	return decodeShared(k.shared, resp.Kvs)
}

// UpdateShared reads the config and the record at one revision, then
// writes fn's result with a compare-and-swap on the record's
// ModRevision; when another host wrote in between, the failed
// transaction reads the newer record, and fn is called again on it. It
// tries until it writes, fn fails or returns its argument, or ctx ends:
// each lost round is another host's write, so the rounds are bounded by
// the writers.
//
// Equivalent: etcdctl txn <<< 'mod("$key") = "$rev"\n\nput $key $val\n\nget $key\n'
func (s *etcdStore) UpdateShared(ctx context.Context, network string, fn func(store.Attrs) (store.Attrs, error)) (store.Shared, error) {
	k, err := s.keys(network)
	if err != nil {
		return store.Shared{}, err
	}
	what := fmt.Sprintf("update the shared record of overlay network %q", network)
	rctx, cancel := s.request(ctx)
	resp, err := s.cli.Txn(rctx).Then(clientv3.OpGet(k.config), clientv3.OpGet(k.shared)).Commit()
	cancel()
	if err != nil {
		return store.Shared{}, fail(ctx, what, err)
	}
	if len(resp.Responses[0].GetResponseRange().GetKvs()) == 0 {
		return store.Shared{}, fmt.Errorf("%s: no config stored at %s (EnsureNetwork first)", what, k.config)
	}
	cur, err := decodeShared(k.shared, resp.Responses[1].GetResponseRange().GetKvs())
	if err != nil {
		return store.Shared{}, fmt.Errorf("%s: %w", what, err)
	}
	for {
		attrs, err := fn(cur.Attrs)
		if err != nil {
			return cur, err
		}
		if attrs == cur.Attrs {
			return cur, nil
		}
		val, err := store.EncodeShared(attrs)
		if err != nil {
			return cur, fmt.Errorf("%s: %w", what, err)
		}
		rctx, cancel := s.request(ctx)
		tr, err := s.cli.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(k.shared), "=", cur.Rev)).
			Then(clientv3.OpPut(k.shared, string(val))).
			Else(clientv3.OpGet(k.shared)).
			Commit()
		cancel()
		if err != nil {
			return cur, fail(ctx, what, err)
		}
		if tr.Succeeded {
			// The put's ModRevision is the transaction's revision.
			return store.Shared{Attrs: attrs, Rev: tr.Header.Revision}, nil
		}
		if cur, err = decodeShared(k.shared, tr.Responses[0].GetResponseRange().GetKvs()); err != nil {
			return store.Shared{}, fmt.Errorf("%s: %w", what, err)
		}
		if err := ctx.Err(); err != nil {
			return cur, fmt.Errorf("%s: %w", what, err)
		}
	}
}
