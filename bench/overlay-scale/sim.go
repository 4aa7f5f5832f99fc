package main

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// The overlay network every run uses: a /8 cut into /24s holds 65,536
// hosts, so a scale run of 1,000 and its churn never reuse a subnet.
var (
	clusterCIDR = netip.MustParsePrefix("10.0.0.0/8")
	// simVTEPs are the simulated hosts' underlay addresses. The lab's
	// underlay is a /24 (254 hosts), so they sit in other "racks" behind
	// its gateway, where the agent's host sends them by its default route.
	// Nothing answers there: the kernel state does not need it.
	simVTEPs = netip.MustParsePrefix("192.168.128.0/17")
)

const (
	networkName = "scale"
	vni         = 4242
	subnetLen   = 24
	vxlanPort   = 4789
)

// network is the stored config, the same as the agent's flags give.
func network() store.Network {
	return store.Network{Name: networkName, CIDR: clusterCIDR, SubnetLen: subnetLen, VNI: vni, Port: vxlanPort}
}

// agentArgs are berth-overlayd's flags for that network (with -network
// and -state-dir, which lab.StartAgent adds).
func agentArgs() []string {
	return []string{"-cidr", clusterCIDR.String(), "-subnet-len", fmt.Sprint(subnetLen), "-vni", fmt.Sprint(vni),
		"-port", fmt.Sprint(vxlanPort), "-node", "h1"}
}

// sim is one simulated host: what its lease says, and so which kernel
// entries the agent makes for it.
type sim struct {
	idx    int
	host   string
	subnet netip.Prefix // subnet number idx+1 of the network: see newSim
	addr   netip.Addr   // the subnet's network address: the route's via, the neighbour's IP
	vtep   netip.Addr
	mac    string // locally administered unicast, 02:b5:…
}

// newSim is simulated host idx (1 ≤ idx ≤ maxSims). Its subnet is the
// network's subnet number idx+1 (10.0.2.0/24 for idx 1): number 0 is
// never handed out and number 1 is left free for the agent, which leases
// the lowest free subnet, so no simulated host asks for the agent's.
func newSim(idx int) sim {
	base := clusterCIDR.Addr().As4()
	n1 := idx + 1
	a := netip.AddrFrom4([4]byte{base[0], byte(n1 >> 8), byte(n1), 0})
	v := simVTEPs.Addr().As4()
	n := uint32(v[2])<<8 | uint32(v[3]) + uint32(idx)
	return sim{
		idx:    idx,
		host:   fmt.Sprintf("sim-%05d", idx),
		subnet: netip.PrefixFrom(a, subnetLen),
		addr:   a,
		vtep:   netip.AddrFrom4([4]byte{v[0], v[1], byte(n >> 8), byte(n)}),
		mac:    fmt.Sprintf("02:b5:%02x:%02x:%02x:%02x", byte(idx>>24), byte(idx>>16), byte(idx>>8), byte(idx)),
	}
}

// maxSims bounds idx by the VTEP range (a /17).
const maxSims = 32000

func (s sim) lease() store.Lease {
	return store.Lease{Subnet: s.subnet, Host: s.host, VTEP: s.vtep, MAC: s.mac}
}

// held is a simulated host whose lease is in the store.
type held struct {
	sim
	hold store.Hold
}

// write is one timed store call: from its start to its return.
type write struct {
	start, done time.Time
}

// acquire writes s's lease as an agent would (Acquire, kept alive by the
// store until released or the store closes). The subnet asked for is
// free, so the store grants it.
func acquire(ctx context.Context, st store.Store, s sim, ttl time.Duration) (held, write, error) {
	w := write{start: time.Now()}
	h, err := st.Acquire(ctx, networkName, s.lease(), ttl)
	w.done = time.Now()
	if err != nil {
		return held{}, w, fmt.Errorf("acquire for %s: %w", s.host, err)
	}
	if got := h.Lease().Subnet; got != s.subnet {
		return held{}, w, fmt.Errorf("acquire for %s: leased %s, asked for %s (is another writer on this store?)", s.host, got, s.subnet)
	}
	return held{sim: s, hold: h}, w, nil
}

// release deletes h's lease.
func release(ctx context.Context, h held) (write, error) {
	w := write{start: time.Now()}
	err := h.hold.Release(ctx)
	w.done = time.Now()
	if err != nil {
		return w, fmt.Errorf("release %s: %w", h.host, err)
	}
	return w, nil
}
