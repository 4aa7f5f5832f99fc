package file

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

func setEpoch(n int) func(store.Attrs) (store.Attrs, error) {
	return func(a store.Attrs) (store.Attrs, error) {
		return a.With("esp.ring", store.Attr{Version: 1, Data: fmt.Appendf(nil, `{"epoch":%d}`, n)})
	}
}

// The shared record is <network>/shared.json, its revision the counter's
// as it was written.
func TestFileSharedLayout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	sh := storetest.UpdateShared(t, s, n.Name, setEpoch(1))
	b, err := os.ReadFile(filepath.Join(dir, n.Name, "shared.json"))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`{"attrs":{"esp.ring":{"version":1,"data":{"epoch":1}}},"rev":%d}`, sh.Rev); string(b) != want {
		t.Errorf("shared.json %s; want %s", b, want)
	}
	if c, err := os.ReadFile(filepath.Join(dir, n.Name, "rev")); err != nil || string(c) != fmt.Sprintf("%d\n", sh.Rev) {
		t.Errorf("revision counter %q, %v; want the record's revision %d", c, err, sh.Rev)
	}
}

// A network whose counter is gone (removed by hand, or from before
// revisions) starts after the shared record's revision too.
func TestFileSharedRevWithoutCounter(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	storetest.UpdateShared(t, s, n.Name, setEpoch(1))
	sh := storetest.UpdateShared(t, s, n.Name, setEpoch(2))
	if err := os.Remove(filepath.Join(dir, n.Name, "rev")); err != nil {
		t.Fatal(err)
	}
	if h := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute); h.Lease().Rev != sh.Rev+1 {
		t.Fatalf("lease written at revision %d without a counter; want %d, after the shared record's", h.Lease().Rev, sh.Rev+1)
	}
}

// On inotify a write of the shared record is read by its event alone:
// no listing of the leases.
func TestFileWatchSharedNoRelist(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	writer := newFileStore(t, dir)
	n := storetest.Ensure(t, writer, storetest.Network(t))
	if _, shared := sharedFS(dir); shared {
		t.Skipf("%s is on a shared file system: its watch polls", dir)
	}
	ws := newFileStore(t, dir)
	w, _ := storetest.StartWatch(t, ws, n.Name)
	const writes = 10
	for i := range writes {
		w.PutShared("a write of the record", storetest.UpdateShared(t, writer, n.Name, setEpoch(i)))
	}
	st := &ws.(*fileStore).stats
	t.Logf("%d writes: %d listings, %d files read", writes, st.scans.Load(), st.reads.Load())
	if st.inotifies.Load() != 1 || st.scans.Load() != 1 || st.reads.Load() > 2*writes {
		t.Fatalf("%d writes: %d inotify watches, %d listings, %d files read; want one watch, 1 listing and a file or two per write",
			writes, st.inotifies.Load(), st.scans.Load(), st.reads.Load())
	}
}

// A shared record the watcher cannot place (removed by hand, rewritten
// without a new revision) is a gap: a new snapshot, with the record as it
// is then.
func TestFileWatchSharedGaps(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := m.newStore(t, dir)
			n := storetest.Ensure(t, s, storetest.Network(t))
			sh := storetest.UpdateShared(t, s, n.Name, setEpoch(1))
			w, _ := storetest.StartWatch(t, m.newStore(t, dir), n.Name)
			path := filepath.Join(dir, n.Name, "shared.json")

			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err = os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if ev := w.Next("the record removed"); !ev.Reset || *ev.Shared != (store.Shared{}) {
				t.Fatalf("event %+v; want a snapshot of no record", ev)
			}
			// Put back by hand, at the revision it had: read by the next
			// snapshot (a file with a revision the watcher has passed
			// is no write it can place).
			if err = os.WriteFile(path, b, 0o600); err != nil {
				t.Fatal(err)
			}
			if ev := w.Next("the record put back"); !ev.Reset || *ev.Shared != sh {
				t.Fatalf("event %+v; want a snapshot of %+v", ev, sh)
			}
			// Rewritten in place, same revision, other attributes.
			other, err := json.Marshal(fileShared{Revision: sh.Rev})
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, other, 0o600); err != nil {
				t.Fatal(err)
			}
			if ev := w.Next("the record rewritten without a revision"); !ev.Reset || *ev.Shared != (store.Shared{Rev: sh.Rev}) {
				t.Fatalf("event %+v; want a snapshot of the empty record at %d", ev, sh.Rev)
			}
			after := storetest.UpdateShared(t, s, n.Name, setEpoch(2))
			w.PutShared("a write after the gaps", after)
		})
	}
}

// FuzzDecodeFileShared: a shared record file never panics the decoder,
// and what it accepts has a revision above 0, attributes within the
// bound, and survives a round trip.
func FuzzDecodeFileShared(f *testing.F) {
	f.Add([]byte(`{"attrs":{"esp.ring":{"version":1,"data":{"epoch":1}}},"rev":3}`))
	f.Add([]byte(`{"rev":1}`))
	f.Add([]byte(`{"attrs":{"esp.ring":{"version":1,"data":1}}}`))
	f.Add([]byte(`{"rev":-1}`))
	f.Add([]byte(`{"rev":"1"}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		sh, err := decodeFileShared(b)
		if err != nil {
			return
		}
		if sh.Rev <= 0 || sh.Attrs.Size() > store.MaxAttrsSize {
			t.Fatalf("accepted %+v", sh)
		}
		again, err := json.Marshal(fileShared{Attrs: sh.Attrs, Revision: sh.Rev})
		if err != nil {
			t.Fatal(err)
		}
		if sh2, err := decodeFileShared(again); err != nil || sh2 != sh {
			t.Fatalf("round trip of %+v: %+v, %v", sh, sh2, err)
		}
	})
}
