package storetest

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// runSticky is the part of the contract about the history of subnets: a
// freed subnet goes back to its last holder, other hosts get one nobody
// held and only then the one left longest ago (Store.Acquire), and the
// store remembers across connections.
func runSticky(t *testing.T, ttl time.Duration, newStore func(t *testing.T) store.Store) {
	// The CI failure this contract is for: a store outage outlasts
	// host1's TTL, its lease expires, other hosts join meanwhile, and
	// host1, back, gets its subnet again, which its containers are
	// addressed in.
	t.Run("StickyAfterExpiry", func(t *testing.T) {
		t.Parallel()
		n := Ensure(t, newStore(t), Network(t))
		gone := newStore(t)
		h1 := Acquire(t, gone, n.Name, Host(1), ttl)
		if err := gone.Close(); err != nil { // renewals stop: the lease expires
			t.Fatal(err)
		}
		WaitLeases(t, newStore(t), n.Name, "host1's lease expired", func(ls []store.Lease) bool { return len(ls) == 0 })
		s := newStore(t)
		var others []netip.Prefix
		for i := 2; i <= 3; i++ {
			others = append(others, Acquire(t, s, n.Name, Host(i), ttl).Lease().Subnet)
		}
		if slices.Contains(others, h1.Lease().Subnet) {
			t.Fatalf("hosts joining after host1's expiry got %v, host1's %s among them; want others", others, h1.Lease().Subnet)
		}
		// Asking for nothing, as an agent that lost its state would; the
		// agent asks for its old subnet, which step 2 grants alike.
		if got := Acquire(t, newStore(t), n.Name, Host(1), ttl).Lease().Subnet; got != h1.Lease().Subnet {
			t.Fatalf("host1 back after its expiry got %s; want its %s", got, h1.Lease().Subnet)
		}
	})

	t.Run("NewHostPrefersNeverHeld", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		s := newStore(t)
		h1 := Acquire(t, s, n.Name, Host(1), ttl)
		Acquire(t, s, n.Name, Host(2), ttl)
		if err := h1.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if got := Acquire(t, s, n.Name, Host(3), ttl).Lease().Subnet.String(); got != "10.244.3.0/24" {
			t.Fatalf("host3 got %s; want 10.244.3.0/24, never held, over host1's just freed %s", got, h1.Lease().Subnet)
		}
	})

	// Three subnets, held by three hosts, two of them released in the
	// other order than they were acquired: each new host gets the one
	// left longest ago, then the network is full.
	t.Run("OldestFreedLast", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Network(t)
		n.CIDR = netip.MustParsePrefix("10.9.0.0/24")
		n.SubnetLen = 26
		Ensure(t, newStore(t), n)
		s := newStore(t)
		var holds []store.Hold
		for i := 1; i <= 3; i++ { // .64, .128, .192: the first is never handed out
			holds = append(holds, Acquire(t, s, n.Name, Host(i), ttl))
		}
		for _, i := range []int{2, 0} {
			if err := holds[i].Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		for i, want := range []string{"10.9.0.192/26", "10.9.0.64/26"} {
			if got := Acquire(t, s, n.Name, Host(4+i), ttl).Lease().Subnet.String(); got != want {
				t.Fatalf("host%d got %s; want %s, of the subnets left the one freed longest ago", 4+i, got, want)
			}
		}
		if _, err := s.Acquire(ctx, n.Name, Host(6), ttl); !errors.Is(err, store.ErrConflict) {
			t.Fatalf("host6 on a full network: err = %v; want ErrConflict", err)
		}
	})

	// An agent restarted is a new connection: the history is the store's,
	// not the connection's. Of two subnets a host held, it gets back the
	// one it held last.
	t.Run("HistorySurvivesNewStore", func(t *testing.T) {
		t.Parallel()
		ctx := Ctx(t)
		n := Ensure(t, newStore(t), Network(t))
		first := newStore(t)
		want := Host(1)
		for _, subnet := range []string{"", "10.244.5.0/24"} {
			want.Subnet = netip.Prefix{}
			if subnet != "" {
				want.Subnet = netip.MustParsePrefix(subnet)
			}
			h := Acquire(t, first, n.Name, want, ttl)
			if err := h.Release(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if err := first.Close(); err != nil {
			t.Fatal(err)
		}
		if got := Acquire(t, newStore(t), n.Name, Host(2), ttl).Lease().Subnet.String(); got != "10.244.2.0/24" {
			t.Fatalf("host2 on a new connection got %s; want 10.244.2.0/24, the lowest nobody held", got)
		}
		if got := Acquire(t, newStore(t), n.Name, Host(1), ttl).Lease().Subnet.String(); got != "10.244.5.0/24" {
			t.Fatalf("host1 on a new connection got %s; want 10.244.5.0/24, the subnet it held last", got)
		}
	})
}

// WaitLeases lists the leases of network until ok accepts them, at most
// Timeout.
func WaitLeases(t *testing.T, s store.Store, network, what string, ok func([]store.Lease) bool) []store.Lease {
	t.Helper()
	deadline := time.Now().Add(Timeout)
	for {
		ls := Leases(t, s, network)
		if ok(ls) {
			return ls
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v; leases %+v", what, Timeout, ls)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
