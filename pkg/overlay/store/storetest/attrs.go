package storetest

import (
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// ack is a feature's attribute as a feature package would define it.
type ack struct {
	Seen []string `json:"seen"`
}

var ackAttr = store.Attribute[ack]{Name: "ack", Version: 1}

// runAttrs is the part of the contract about lease attributes: they round
// trip untouched, a Hold updates them in place and the other hosts are
// told, a host keeps the attributes it does not know, and too many are
// refused, changing nothing.
func runAttrs(t *testing.T, ttl time.Duration, newStore func(t *testing.T) store.Store) {
	t.Run("AttrsRoundTrip", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		want := WithAttr(t, Host(1), "mesh", 3, ` {"ports": [80, 443], "note": "<&>"} `)
		want = WithAttr(t, want, "esp.epoch", 1, `7`)
		h := Acquire(t, newStore(t), n.Name, want, ttl)
		if got := h.Lease(); got.Attrs != want.Attrs {
			t.Fatalf("Hold's lease has attrs %v; want %v", got.Attrs, want.Attrs)
		}
		got := Leases(t, newStore(t), n.Name)
		if !slices.Equal(got, []store.Lease{h.Lease()}) {
			t.Fatalf("Leases = %+v; want %+v", got, h.Lease())
		}
		mesh, ok := got[0].Attrs.Get("mesh")
		if !ok || mesh.Version != 3 || string(mesh.Data) != `{"ports":[80,443],"note":"\u003c\u0026\u003e"}` {
			t.Fatalf("mesh as read back: %+v, %v; want version 3 and the data compacted", mesh, ok)
		}
		if !slices.Equal(got[0].Attrs.Names(), []string{"esp.epoch", "mesh"}) {
			t.Fatalf("names as read back: %v", got[0].Attrs.Names())
		}
	})

	t.Run("AttrsUpdate", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		h := Acquire(t, newStore(t), n.Name, WithAttr(t, Host(1), "mesh", 1, `{"ports":[80]}`), ttl)
		before := h.Lease()
		watcher := newStore(t)
		w, snap := StartWatch(t, watcher, n.Name)
		if !slices.Equal(snap.Leases, []store.Lease{before}) {
			t.Fatalf("snapshot %+v; want %+v", snap.Leases, before)
		}

		after, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return ackAttr.Set(a, ack{Seen: []string{"host2"}})
		})
		if err != nil {
			t.Fatal(err)
		}
		if after.Subnet != before.Subnet || after.VTEP != before.VTEP || after.MAC != before.MAC || after.Host != before.Host {
			t.Fatalf("Update changed more than the attributes: %+v, was %+v", after, before)
		}
		if after.Rev <= before.Rev {
			t.Fatalf("Update wrote at revision %d, the lease was at %d", after.Rev, before.Rev)
		}
		if v, ok, err := ackAttr.Get(after.Attrs); err != nil || !ok || !slices.Equal(v.Seen, []string{"host2"}) {
			t.Fatalf("ack after Update: %+v, %v, %v", v, ok, err)
		}
		if mesh, _ := after.Attrs.Get("mesh"); string(mesh.Data) != `{"ports":[80]}` {
			t.Fatalf("Update of ack changed mesh: %+v", mesh)
		}
		if h.Lease() != after {
			t.Fatalf("Hold's lease %+v; want %+v", h.Lease(), after)
		}
		// Another host sees the update as one event, the lease with its
		// new attributes.
		w.Put("the attributes' update", after)

		// fn's error comes back as it is, with nothing written; so does a
		// set over the size bound.
		refused := errors.New("the feature refused")
		if _, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) { return a, refused }); !errors.Is(err, refused) {
			t.Fatalf("Update with a failing fn: %v", err)
		}
		big := `"` + strings.Repeat("x", store.MaxAttrsSize) + `"`
		_, err = h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return a.With("big", store.Attr{Version: 1, Data: []byte(big)})
		})
		if !errors.Is(err, store.ErrAttrsTooLarge) {
			t.Fatalf("Update over the size bound: %v; want ErrAttrsTooLarge", err)
		}
		// Unchanged attributes: nothing to write, no error.
		if got, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) { return a, nil }); err != nil || got != after {
			t.Fatalf("Update with no change = %+v, %v", got, err)
		}
		if got := Leases(t, watcher, n.Name); !slices.Equal(got, []store.Lease{after}) {
			t.Fatalf("after refused updates Leases = %+v; want %+v", got, after)
		}
		select {
		case <-h.Lost():
			t.Fatal("the Hold is lost after updates")
		default:
		}

		// Two features updating their own attributes at once: both stick,
		// since the Hold serialises its updates.
		var wg sync.WaitGroup
		for _, name := range []string{"feature.a", "feature.b"} {
			wg.Go(func() {
				for i := range 3 {
					_, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
						return a.With(name, store.Attr{Version: 1, Data: []byte(strconv.Itoa(i))})
					})
					if err != nil {
						t.Errorf("%s: %v", name, err)
					}
				}
			})
		}
		wg.Wait()
		if got := h.Lease().Attrs.Names(); !slices.Equal(got, []string{"ack", "feature.a", "feature.b", "mesh"}) {
			t.Fatalf("after concurrent updates the attributes are %v", got)
		}
		w.WaitState("the concurrent updates", func(ls []store.Lease) bool {
			return slices.Equal(ls, []store.Lease{h.Lease()})
		})

		// A released Hold holds nothing to update.
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
		_, err = h.Update(ctx, func(a store.Attrs) (store.Attrs, error) { return ackAttr.Delete(a), nil })
		if !errors.Is(err, store.ErrLost) {
			t.Fatalf("Update after Release: %v; want ErrLost", err)
		}
		if got := Leases(t, watcher, n.Name); len(got) != 0 {
			t.Fatalf("Update after Release brought the lease back: %+v", got)
		}
	})

	// A restarted agent that knows fewer features than the one before it
	// (a downgrade, or a feature turned off) keeps their attributes.
	t.Run("AttrsUnknownKept", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		newer := Acquire(t, newStore(t), n.Name,
			WithAttr(t, WithAttr(t, Host(1), "ack", 1, `{"seen":["host9"]}`), "future", 4, `{"only":"a newer agent knows"}`), ttl)
		older := Acquire(t, newStore(t), n.Name, WithAttr(t, Host(1), "ack", 1, `{"seen":[]}`), ttl)
		want := WithAttr(t, newer.Lease(), "ack", 1, `{"seen":[]}`)
		if older.Lease().Rev <= newer.Lease().Rev {
			t.Fatalf("taking over at revision %d, after the lease's %d", older.Lease().Rev, newer.Lease().Rev)
		}
		want.Rev = older.Lease().Rev
		if got := older.Lease(); got != want {
			t.Fatalf("re-acquired %+v; want %+v (its own ack, the unknown future kept)", got, want)
		}
		WaitClosed(t, newer.Lost(), "the newer incarnation's Lost")
		after, err := older.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return ackAttr.Set(a, ack{Seen: []string{"host2"}})
		})
		if err != nil {
			t.Fatal(err)
		}
		if future, ok := after.Attrs.Get("future"); !ok || future.Version != 4 || string(future.Data) != `{"only":"a newer agent knows"}` {
			t.Fatalf("future after an update of ack: %+v, %v", future, ok)
		}
		if got := Leases(t, newStore(t), n.Name); !slices.Equal(got, []store.Lease{after}) {
			t.Fatalf("Leases = %+v; want %+v", got, after)
		}
		// The taken-over Hold can no longer write.
		_, err = newer.Update(ctx, func(a store.Attrs) (store.Attrs, error) { return ackAttr.Delete(a), nil })
		if !errors.Is(err, store.ErrLost) {
			t.Fatalf("Update of the taken-over Hold: %v; want ErrLost", err)
		}
	})

	t.Run("AttrsOversize", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		half := `"` + strings.Repeat("x", store.MaxAttrsSize/2) + `"`
		first := Acquire(t, newStore(t), n.Name, WithAttr(t, Host(1), "a", 1, half), ttl)
		// Another incarnation of the host with another big attribute: the
		// two together are over the bound, and the store stays as it was.
		_, err := newStore(t).Acquire(ctx, n.Name, WithAttr(t, Host(1), "b", 1, half), ttl)
		if !errors.Is(err, store.ErrAttrsTooLarge) || !strings.Contains(err.Error(), "64 KiB") {
			t.Fatalf("Acquire merging over the bound: %v; want ErrAttrsTooLarge naming 64 KiB", err)
		}
		if got := Leases(t, newStore(t), n.Name); !slices.Equal(got, []store.Lease{first.Lease()}) {
			t.Fatalf("after the refused Acquire Leases = %+v; want the first's", got)
		}
		select {
		case <-first.Lost():
			t.Fatal("a refused Acquire took the lease over")
		case <-time.After(ttl):
		}
		if _, err := first.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return a.With("b", store.Attr{Version: 1, Data: []byte(half)})
		}); !errors.Is(err, store.ErrAttrsTooLarge) {
			t.Fatalf("Update over the bound: %v", err)
		}
	})
}
