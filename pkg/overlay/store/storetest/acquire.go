package storetest

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// BenchAcquire measures Acquire on a network where live hosts hold a
// lease and as many more have held one and left (released it): each of
// the b.N calls reads them and writes one lease, for a host that comes
// and goes (its Release is outside the timer). When ask is set the host
// asks for the subnet it held, as an agent does after a restart or a
// lost lease; else for none, as a new host does.
func BenchAcquire(b *testing.B, s store.Store, live int, ask bool) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	n := Ensure(b, s, store.Network{Name: "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36),
		CIDR: netip.MustParsePrefix("10.0.0.0/8"), SubnetLen: 24, VNI: 42, Port: 4789})
	var left []store.Hold
	for i := range 2 * live {
		h, err := s.Acquire(ctx, n.Name, benchHost(i), time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		if i%2 == 1 {
			left = append(left, h)
		}
	}
	for _, h := range left {
		if err := h.Release(ctx); err != nil {
			b.Fatal(err)
		}
	}
	want := benchHost(2 * live)
	b.ResetTimer()
	for range b.N {
		h, err := s.Acquire(ctx, n.Name, want, time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if ask {
			want.Subnet = h.Lease().Subnet
		}
		if err := h.Release(ctx); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// benchHost returns the lease request of host i of a benchmark (up to
// 65535 hosts), without a subnet.
func benchHost(i int) store.Lease {
	return store.Lease{
		Host: fmt.Sprintf("bench%d", i),
		VTEP: netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}),
		MAC:  fmt.Sprintf("02:00:00:00:%02x:%02x", byte(i>>8), byte(i)),
	}
}
