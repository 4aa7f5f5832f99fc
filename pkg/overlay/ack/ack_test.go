package ack

import (
	"fmt"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

func TestPublish(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name              string
		synced, published int64
		peers             []Peer
		want              int64
	}{
		{"nobody waits", 10, 0, []Peer{{Host: "a"}, {Host: "b", Sync: 4}}, 0},
		{"a waiter synced past", 10, 0, []Peer{{Host: "j", Await: 7}}, 10},
		{"a waiter not synced yet", 6, 0, []Peer{{Host: "j", Await: 7}}, 0},
		{"already acknowledged", 10, 8, []Peer{{Host: "j", Await: 7}}, 0},
		{"acknowledged an older one", 12, 8, []Peer{{Host: "j", Await: 7}, {Host: "k", Await: 11}}, 12},
		{"exactly at", 7, 0, []Peer{{Host: "j", Await: 7}}, 7},
	} {
		if got := Publish(c.synced, c.published, c.peers); got != c.want {
			t.Errorf("%s: Publish = %d, want %d", c.name, got, c.want)
		}
	}
}

func TestWaitCheck(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	w := Wait{Rev: 20, Since: t0, Bound: DefaultBound}
	peers := []Peer{{Host: "c", Sync: 19}, {Host: "a", Sync: 20}, {Host: "b"}, {Host: "d", Sync: 25}}
	pending, late := w.Check(t0.Add(time.Second), peers)
	if fmt.Sprint(pending, late) != "[b c] []" {
		t.Errorf("at 1s: pending %v late %v, want [b c] []", pending, late)
	}
	pending, late = w.Check(t0.Add(DefaultBound), peers)
	if fmt.Sprint(pending, late) != "[] [b c]" {
		t.Errorf("at the bound: pending %v late %v, want [] [b c]", pending, late)
	}
	if pending, late := w.Check(t0, nil); len(pending)+len(late) != 0 {
		t.Errorf("no peers: %v %v", pending, late)
	}
	if !w.Deadline().Equal(t0.Add(DefaultBound)) {
		t.Errorf("deadline %v", w.Deadline())
	}
}

// The protocol end to end over leases: a joiner awaits its write, each
// peer publishes once it synced past it, and the joiner's wait is over.
func TestRound(t *testing.T) {
	t.Parallel()
	lease := func(host string, attrs ...func(store.Attrs) store.Attrs) store.Lease {
		var a store.Attrs
		for _, f := range attrs {
			a = f(a)
		}
		return store.Lease{Host: host, Attrs: a}
	}
	set := func(k store.Attribute[Sync], v Sync) func(store.Attrs) store.Attrs {
		return func(a store.Attrs) store.Attrs {
			a, err := k.Set(a, v)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
	}
	await := func(rev int64) func(store.Attrs) store.Attrs {
		return func(a store.Attrs) store.Attrs {
			a, err := AwaitAttr.Set(a, Await{Rev: rev})
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
	}
	joiner := lease("j", await(30))
	if p := Of(joiner); p.Await != 30 || p.Sync != 0 || p.Host != "j" {
		t.Fatalf("Of(joiner) = %+v", p)
	}
	// Peer h1 has synced to 31: it publishes 31.
	if got := Publish(31, 0, []Peer{Of(joiner)}); got != 31 {
		t.Fatalf("h1 publishes %d, want 31", got)
	}
	h1 := lease("h1", set(SyncAttr, Sync{Rev: 31}))
	h2 := lease("h2") // has not synced that far
	w := Wait{Rev: 30, Since: time.Now(), Bound: time.Hour}
	if pending, _ := w.Check(time.Now(), []Peer{Of(h1), Of(h2)}); fmt.Sprint(pending) != "[h2]" {
		t.Fatalf("pending %v, want [h2]", pending)
	}
	h2 = lease("h2", set(SyncAttr, Sync{Rev: 33}))
	if pending, late := w.Check(time.Now(), []Peer{Of(h1), Of(h2)}); len(pending)+len(late) != 0 {
		t.Fatalf("pending %v late %v after both synced", pending, late)
	}
	// A Sync of a version this release does not know counts as absent.
	a, err := (store.Attrs{}).With(SyncAttr.Name, store.Attr{Version: 9, Data: []byte(`{"rev":99}`)})
	if err != nil {
		t.Fatal(err)
	}
	if p := Of(store.Lease{Host: "x", Attrs: a}); p.Sync != 0 {
		t.Errorf("unknown version read as %d", p.Sync)
	}
}
