package file

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/state"
)

// The shared record of a network is <network>/shared.json: the store's
// encoding of it (store.EncodeShared) and the revision of its write,
// {"attrs":{…},"rev":N}. It is written like a lease file: under the
// lock, the counter bumped first, a temp file renamed over the old one,
// so that Shared and a Watch read it whole without the lock. A network
// without the file has the zero store.Shared. It has no TTL and is never
// removed; a Watch that finds it gone (removed by hand) reads a new
// snapshot.

const sharedFile = "shared.json"

// fileShared is the shared record file.
type fileShared struct {
	Attrs    store.Attrs `json:"attrs,omitzero"`
	Revision int64       `json:"rev"`
}

// decodeFileShared decodes and validates the shared record file: at most
// store.MaxRecordSize, attributes valid, a revision above 0.
func decodeFileShared(b []byte) (store.Shared, error) {
	attrs, err := store.DecodeShared(b)
	if err != nil {
		return store.Shared{}, err
	}
	var f fileShared
	if err := json.Unmarshal(b, &f); err != nil {
		return store.Shared{}, fmt.Errorf("decode shared record: %w", err)
	}
	if f.Revision <= 0 {
		return store.Shared{}, fmt.Errorf("stored shared record: rev %d: a written record has a revision above 0", f.Revision)
	}
	return store.Shared{Attrs: attrs, Rev: f.Revision}, nil
}

// readShared reads the shared record file of the network directory d;
// ok is false when there is none. It reads no more than the record may
// take, and one byte to tell.
func readShared(d string) (sh store.Shared, ok bool, err error) {
	path := filepath.Join(d, sharedFile)
	b, err := readAtMost(path, store.MaxRecordSize+1)
	if errors.Is(err, fs.ErrNotExist) {
		return store.Shared{}, false, nil
	}
	if err != nil {
		return store.Shared{}, false, err
	}
	if sh, err = decodeFileShared(b); err != nil {
		return store.Shared{}, false, fmt.Errorf("%s: %w", path, err)
	}
	return sh, true, nil
}

// writeShared writes the shared record file of d. The caller holds the
// lock and took sh.Rev from the counter.
func writeShared(d string, sh store.Shared) error {
	b, err := json.Marshal(fileShared{Attrs: sh.Attrs, Revision: sh.Rev})
	if err != nil {
		return err
	}
	return state.WriteAtomic(filepath.Join(d, sharedFile), b)
}

// Shared reads the shared record file, without the lock.
//
// Equivalent: cat $dir/$network/shared.json
func (s *fileStore) Shared(ctx context.Context, network string) (store.Shared, error) {
	d, err := s.netDir(network)
	if err != nil {
		return store.Shared{}, err
	}
	sh, _, err := readShared(d)
	if err != nil {
		return store.Shared{}, fmt.Errorf("shared record of overlay network %q: %w", network, err)
	}
	return sh, nil
}

// UpdateShared reads the record without the lock and calls fn outside
// it, as the etcd store does, then under the lock writes fn's result if
// the record is still the one read; else it calls fn again on the newer
// record. So fn never runs under the lock that every host's renewal
// takes.
//
// Equivalent: flock $dir/$network/lock (compare rev, bump the counter, rewrite shared.json)
func (s *fileStore) UpdateShared(ctx context.Context, network string, fn func(store.Attrs) (store.Attrs, error)) (store.Shared, error) {
	d, err := s.netDir(network)
	if err != nil {
		return store.Shared{}, err
	}
	what := fmt.Sprintf("update the shared record of overlay network %q", network)
	_, ok, err := readNetwork(d)
	if err == nil && !ok {
		err = errors.New("no config stored (EnsureNetwork first)")
	}
	if err != nil {
		return store.Shared{}, fmt.Errorf("%s: %w", what, err)
	}
	cur, _, err := readShared(d)
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
		if _, err = store.EncodeShared(attrs); err != nil { // the bound, before a revision is taken
			return cur, fmt.Errorf("%s: %w", what, err)
		}
		type result struct {
			sh      store.Shared
			written bool
		}
		r, err := locked(ctx, d, func() (result, error) {
			now, _, rerr := readShared(d)
			if rerr != nil || now.Rev != cur.Rev {
				return result{sh: now}, rerr // another host wrote in between
			}
			rev, berr := bumpRev(d)
			if berr != nil {
				return result{}, berr
			}
			next := store.Shared{Attrs: attrs, Rev: rev}
			return result{sh: next, written: true}, writeShared(d, next)
		})
		if err != nil {
			return cur, fmt.Errorf("%s: %w", what, err)
		}
		if r.written {
			return r.sh, nil
		}
		cur = r.sh
		if err := ctx.Err(); err != nil {
			return cur, fmt.Errorf("%s: %w", what, err)
		}
	}
}
