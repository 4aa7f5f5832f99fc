// Package storetest is the contract every store.Store backend passes,
// as a test suite a backend's own tests run (Run), and the helpers those
// tests share: a network and hosts to lease for, a Watcher that reads a
// Watch and checks its events, and waits for what a Store promises. It
// touches nothing but the stores it is given.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// Timeout bounds every wait for an event; no test asserts on durations.
const Timeout = 30 * time.Second

// Run runs the Store contract as subtests of t. newStore returns a new
// connection to one shared state (a directory, an etcd cluster), closed
// in t.Cleanup; each connection plays one "host" or one incarnation of
// it. ttl is the lease TTL the subtests use: the shortest the backend
// honours. Each subtest uses a network of its own, so they run in
// parallel.
func Run(t *testing.T, ttl time.Duration, newStore func(t *testing.T) store.Store) {
	t.Run("EnsureNetworkFirstWins", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		s1, s2 := newStore(t), newStore(t)
		n := Network(t)
		if got, err := s1.EnsureNetwork(ctx, n); err != nil || got != n {
			t.Fatalf("first EnsureNetwork = %+v, %v; want %+v, nil", got, err, n)
		}
		if got, err := s2.EnsureNetwork(ctx, n); err != nil || got != n {
			t.Fatalf("same config again = %+v, %v; want %+v, nil", got, err, n)
		}
		other := n
		other.VNI++
		got, err := s2.EnsureNetwork(ctx, other)
		if !errors.Is(err, store.ErrConflict) || got != n {
			t.Fatalf("different config = %+v, %v; want the stored %+v and ErrConflict", got, err, n)
		}
		bad := n
		bad.Port = 0
		if _, err := s1.EnsureNetwork(ctx, bad); err == nil || errors.Is(err, store.ErrConflict) || !strings.Contains(err.Error(), "port") {
			t.Fatalf("invalid config: err = %v; want a validation error naming the port", err)
		}
	})

	t.Run("AcquireWithoutNetwork", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		s := newStore(t)
		_, err := s.Acquire(ctx, Network(t).Name, Host(1), ttl)
		if err == nil || !strings.Contains(err.Error(), "EnsureNetwork") {
			t.Fatalf("Acquire on a network without config: err = %v; want one saying to EnsureNetwork first", err)
		}
	})

	t.Run("DistinctSubnets", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		a := Acquire(t, newStore(t), n.Name, Host(1), ttl)
		b := Acquire(t, newStore(t), n.Name, Host(2), ttl)
		// The first subnet is never handed out (PickSubnet).
		want := []store.Lease{withSubnet(Host(1), "10.244.1.0/24"), withSubnet(Host(2), "10.244.2.0/24")}
		if got := []store.Lease{a.Lease(), b.Lease()}; !slices.Equal(WithoutRev(got), want) {
			t.Fatalf("leases = %+v; want %+v", got, want)
		}
		// Each write has a revision of its own, later than the ones before.
		if a.Lease().Rev <= 0 || b.Lease().Rev <= a.Lease().Rev {
			t.Fatalf("revisions %d then %d; want positive and increasing", a.Lease().Rev, b.Lease().Rev)
		}
		if got := Leases(t, newStore(t), n.Name); !slices.Equal(got, []store.Lease{a.Lease(), b.Lease()}) {
			t.Fatalf("Leases = %+v; want %+v, revisions included", got, want)
		}
		if err := errors.Join(a.Release(ctx), b.Release(ctx)); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("SameHostGetsItsSubnet", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		Acquire(t, newStore(t), n.Name, Host(1), ttl)
		old := Acquire(t, newStore(t), n.Name, Host(2), ttl)
		// host2 restarts with a new VTEP while its old lease is live and
		// asks for another subnet: it gets its own, with the new values,
		// and the old incarnation's Hold is lost.
		again := Host(2)
		again.VTEP = netip.MustParseAddr("192.0.2.99")
		again.Subnet = netip.MustParsePrefix("10.244.9.0/24")
		h := Acquire(t, newStore(t), n.Name, again, ttl)
		if h.Lease().Subnet != old.Lease().Subnet {
			t.Fatalf("re-acquired %s; want the old %s", h.Lease().Subnet, old.Lease().Subnet)
		}
		WaitClosed(t, old.Lost(), "the old incarnation's Lost")
		got := Leases(t, newStore(t), n.Name)
		if len(got) != 2 || got[1] != h.Lease() {
			t.Fatalf("Leases = %+v; want host1's and %+v", got, h.Lease())
		}
		if err := old.Release(ctx); err != nil {
			t.Fatalf("Release of a lost Hold: %v", err)
		}
		if got := Leases(t, newStore(t), n.Name); len(got) != 2 {
			t.Fatalf("Release of the lost Hold deleted the new lease: %+v", got)
		}
		select {
		case <-h.Lost():
			t.Fatal("the new Hold is lost")
		default:
		}
	})

	t.Run("WantedSubnet", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		s := newStore(t)
		for _, tc := range []struct {
			host       int
			want, gets string
		}{
			{1, "10.244.7.0/24", "10.244.7.0/24"}, // free: honoured
			{2, "10.244.7.0/24", "10.244.1.0/24"}, // taken: the lowest free, past the first
			{3, "10.99.0.0/24", "10.244.2.0/24"},  // outside the network
			{4, "10.244.2.0/23", "10.244.3.0/24"}, // not the network's length
			{5, "10.244.3.1/24", "10.244.4.0/24"}, // host bits set (10.244.3.0/24 is host4's)
			{6, "10.244.200.0/24", "10.244.200.0/24"},
			{7, "10.244.0.0/24", "10.244.0.0/24"}, // the first subnet, asked for: honoured
		} {
			want := Host(tc.host)
			want.Subnet = netip.MustParsePrefix(tc.want)
			if got := Acquire(t, s, n.Name, want, ttl).Lease().Subnet.String(); got != tc.gets {
				t.Errorf("host%d wanting %s got %s; want %s", tc.host, tc.want, got, tc.gets)
			}
		}
	})

	t.Run("Exhaustion", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Network(t)
		n.CIDR = netip.MustParsePrefix("10.9.0.0/24")
		n.SubnetLen = 26
		Ensure(t, newStore(t), n)
		s := newStore(t)
		var holds []store.Hold
		for i := 1; i <= 3; i++ { // the first of the four is never handed out
			holds = append(holds, Acquire(t, s, n.Name, Host(i), ttl))
		}
		_, err := s.Acquire(ctx, n.Name, Host(5), ttl)
		if !errors.Is(err, store.ErrConflict) {
			t.Fatalf("fourth host on three subnets: err = %v; want ErrConflict", err)
		}
		if err := holds[1].Release(ctx); err != nil {
			t.Fatal(err)
		}
		if got := Acquire(t, s, n.Name, Host(5), ttl).Lease().Subnet.String(); got != "10.9.0.128/26" {
			t.Fatalf("after a release the fifth host got %s; want the released 10.9.0.128/26", got)
		}
	})

	t.Run("RenewalOutlivesTTL", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		s := newStore(t)
		h := Acquire(t, s, n.Name, WithAttr(t, Host(1), "ack", 1, `{"seen":[2]}`), ttl)
		// Renewal keeps it, attributes and all, past several TTLs: wait 3
		// and look.
		time.Sleep(3 * ttl)
		if got := Leases(t, s, n.Name); !slices.Equal(got, []store.Lease{h.Lease()}) || h.Lease().Attrs.IsZero() {
			t.Fatalf("after 3 TTLs of renewal Leases = %+v; want %+v", got, h.Lease())
		}
		select {
		case <-h.Lost():
			t.Fatal("a renewed Hold is lost")
		default:
		}
	})

	// A release deletes the lease as Release returns, for every
	// connection: no TTL to wait for. (A Watch sees it as one deletion:
	// WatchSnapshotThenEvents.)
	t.Run("ReleaseDeletesAtOnce", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		s, other := newStore(t), newStore(t)
		h := Acquire(t, s, n.Name, Host(1), ttl)
		if got := Leases(t, other, n.Name); len(got) != 1 {
			t.Fatalf("Leases = %+v; want the one acquired", got)
		}
		if err := h.Release(ctx); err != nil {
			t.Fatal(err)
		}
		for i, c := range []store.Store{s, other} {
			if got := Leases(t, c, n.Name); len(got) != 0 {
				t.Fatalf("right after Release, Leases on connection %d = %+v; want none", i+1, got)
			}
		}
		if err := h.Release(ctx); err != nil {
			t.Fatalf("second Release: %v", err)
		}
	})

	runSticky(t, ttl, newStore)
	runAttrs(t, ttl, newStore)
	runShared(t, ttl, newStore)
	runWatch(t, ttl, newStore)

	t.Run("BadInput", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		s := newStore(t)
		n := Ensure(t, s, Network(t))
		for _, tc := range []struct {
			name    string
			network string
			want    store.Lease
			ttl     time.Duration
			errHas  string
		}{
			{"escaping network name", "../x", Host(1), ttl, "name"},
			{"no host", n.Name, store.Lease{VTEP: Host(1).VTEP, MAC: Host(1).MAC}, ttl, "host"},
			{"no vtep", n.Name, store.Lease{Host: "h", MAC: Host(1).MAC}, ttl, "vtep"},
			{"bad mac", n.Name, store.Lease{Host: "h", VTEP: Host(1).VTEP, MAC: "zz"}, ttl, "mac"},
			{"short ttl", n.Name, Host(1), time.Millisecond, "ttl"},
		} {
			if _, err := s.Acquire(ctx, tc.network, tc.want, tc.ttl); err == nil || !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("%s: Acquire err = %v; want one naming %q", tc.name, err, tc.errHas)
			}
		}
		if _, err := s.Leases(ctx, "a/b"); err == nil {
			t.Error("Leases of network \"a/b\": no error")
		}
	})
}

// Ctx is a context for one test's store calls, ended with t.
func Ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 2*Timeout)
	t.Cleanup(cancel)
	return ctx
}

// Network is a /16 split into /24s, named after the (sub)test.
func Network(t testing.TB) store.Network {
	name := strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())
	return store.Network{Name: name, CIDR: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 24, VNI: 42, Port: 4789}
}

// Host returns the lease request of host i (1..250), without a subnet.
func Host(i int) store.Lease {
	return store.Lease{
		Host: fmt.Sprintf("host%d", i),
		VTEP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}),
		MAC:  fmt.Sprintf("02:00:00:00:00:%02x", i),
	}
}

// WithAttr returns l with the attribute name set to version and data.
func WithAttr(t *testing.T, l store.Lease, name string, version int, data string) store.Lease {
	t.Helper()
	var err error
	if l.Attrs, err = l.Attrs.With(name, store.Attr{Version: version, Data: []byte(data)}); err != nil {
		t.Fatal(err)
	}
	return l
}

// WithoutRev returns ls with every Rev 0, to compare with leases as a
// caller asks for them.
func WithoutRev(ls []store.Lease) []store.Lease {
	out := slices.Clone(ls)
	for i := range out {
		out[i].Rev = 0
	}
	return out
}

func withSubnet(l store.Lease, subnet string) store.Lease {
	l.Subnet = netip.MustParsePrefix(subnet)
	return l
}

// Ensure stores n (or checks it) and fails t on an error.
func Ensure(t testing.TB, s store.Store, n store.Network) store.Network {
	t.Helper()
	got, err := s.EnsureNetwork(Ctx(t), n)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// Acquire acquires a lease and fails t on an error.
func Acquire(t testing.TB, s store.Store, network string, want store.Lease, ttl time.Duration) store.Hold {
	t.Helper()
	h, err := s.Acquire(Ctx(t), network, want, ttl)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// Leases lists the leases of network and fails t on an error.
func Leases(t *testing.T, s store.Store, network string) []store.Lease {
	t.Helper()
	ls, err := s.Leases(Ctx(t), network)
	if err != nil {
		t.Fatal(err)
	}
	return ls
}

// WaitClosed waits until ch (a Hold's Lost) is closed.
func WaitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(Timeout):
		t.Fatalf("%s not closed within %v", what, Timeout)
	}
}
