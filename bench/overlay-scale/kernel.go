package main

import (
	"context"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/overlay/vxlan"
)

// The three kernel entries the agent makes per peer.
const (
	kRoute uint8 = 1 << iota // $subnet via $addr dev bvx… onlink
	kNeigh                   // $addr lladdr $mac nud permanent
	kFDB                     // $mac dst $vtep self permanent
	kAll   = kRoute | kNeigh | kFDB
)

// rcvBuf is the subscriptions' socket buffer (SO_RCVBUFFORCE, this
// socket only): a sync of 1,000 peers is 3,000 notifications in a burst,
// and a full buffer (ENOBUFS) would end the subscription.
const rcvBuf = 64 << 20

// track is what the agent's kernel holds for one simulated host, as the
// notifications tell.
type track struct {
	s     sim
	have  uint8     // kRoute|kNeigh|kFDB seen and not deleted since
	full  time.Time // when have last became kAll
	empty time.Time // when have last dropped to 0
}

// kernelWatch follows the routes, neighbours and FDB entries of one
// namespace by netlink notifications (RTNLGRP_IPV4_ROUTE, RTNLGRP_NEIGH;
// FDB entries come as AF_BRIDGE neighbours), timestamping each change of
// an expected host's entries as it arrives. It never polls.
type kernelWatch struct {
	mu       sync.Mutex
	bySubnet map[netip.Prefix]*track
	byAddr   map[netip.Addr]*track
	byMAC    map[string]*track
	full     int       // tracks with all three entries
	lastFull time.Time // when full last grew
	first    time.Time // when full first grew
	counts   [3]int    // tracks holding a route, a neighbour, an FDB entry
	events   int       // notifications about expected hosts
	changed  chan struct{}
	err      error // a subscription ended or failed
	stopped  bool

	done chan struct{}
	wg   sync.WaitGroup
}

// watchKernel subscribes to ns's route and neighbour notifications.
//
// Equivalent: ip -n $ns monitor route neigh
func watchKernel(ns *lab.NS) (*kernelWatch, error) {
	h, err := vnetns.GetFromPath(ns.Path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", ns.Path, err)
	}
	defer h.Close() // the sockets stay in the namespace
	w := &kernelWatch{
		bySubnet: map[netip.Prefix]*track{}, byAddr: map[netip.Addr]*track{}, byMAC: map[string]*track{},
		changed: make(chan struct{}), done: make(chan struct{}),
	}
	routes := make(chan netlink.RouteUpdate, 4096)
	neighs := make(chan netlink.NeighUpdate, 4096)
	err = netlink.RouteSubscribeWithOptions(routes, w.done, netlink.RouteSubscribeOptions{
		Namespace: &h, ErrorCallback: w.fail("route"), ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: true,
	})
	if err != nil {
		close(w.done)
		return nil, fmt.Errorf("subscribe to routes in %s: %w", ns.Name, err)
	}
	err = netlink.NeighSubscribeWithOptions(neighs, w.done, netlink.NeighSubscribeOptions{
		Namespace: &h, ErrorCallback: w.fail("neighbour"), ReceiveBufferSize: rcvBuf, ReceiveBufferForceSize: true,
	})
	if err != nil {
		close(w.done)
		for range routes { // the route subscription's goroutine closes it
		}
		return nil, fmt.Errorf("subscribe to neighbours in %s: %w", ns.Name, err)
	}
	w.wg.Go(func() {
		for u := range routes {
			w.route(u, time.Now())
		}
		w.ended("route")
	})
	w.wg.Go(func() {
		for u := range neighs {
			w.neigh(u, time.Now())
		}
		w.ended("neighbour")
	})
	return w, nil
}

// fail records an error a subscription reports; after stop, the errors
// of its closing socket are expected.
func (w *kernelWatch) fail(what string) func(error) {
	return func(err error) {
		w.mu.Lock()
		defer w.mu.Unlock()
		if !w.stopped && w.err == nil {
			w.err = fmt.Errorf("%s notifications: %w", what, err)
			w.signal()
		}
	}
}

// ended notes a subscription whose channel closed.
func (w *kernelWatch) ended(what string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.stopped && w.err == nil {
		w.err = fmt.Errorf("%s notifications ended", what)
		w.signal()
	}
}

// stop closes the subscriptions and waits for their goroutines.
func (w *kernelWatch) stop() {
	w.mu.Lock()
	stopped := w.stopped
	w.stopped = true
	w.mu.Unlock()
	if !stopped {
		close(w.done)
	}
	w.wg.Wait()
}

// signal wakes the waiters; the caller holds mu.
func (w *kernelWatch) signal() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// expect makes s's entries followed from now on.
func (w *kernelWatch) expect(s sim) *track {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := &track{s: s}
	w.bySubnet[s.subnet], w.byAddr[s.addr], w.byMAC[s.mac] = t, t, t
	return t
}

func (w *kernelWatch) route(u netlink.RouteUpdate, at time.Time) {
	if u.Family != netlink.FAMILY_V4 || u.Table != unix.RT_TABLE_MAIN {
		return
	}
	dst, ok := cidr.Prefix(u.Dst)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if t := w.bySubnet[dst]; t != nil {
		gw, _ := cidr.Addr(u.Gw)
		w.set(t, kRoute, u.Type == unix.RTM_NEWROUTE && gw == t.s.addr, at)
	}
}

func (w *kernelWatch) neigh(u netlink.NeighUpdate, at time.Time) {
	newEntry := u.Type == unix.RTM_NEWNEIGH
	ip, _ := cidr.Addr(u.IP)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch u.Family {
	case netlink.FAMILY_V4:
		if t := w.byAddr[ip]; t != nil {
			w.set(t, kNeigh, newEntry && u.State&netlink.NUD_PERMANENT != 0 && u.HardwareAddr.String() == t.s.mac, at)
		}
	case unix.AF_BRIDGE:
		if t := w.byMAC[u.HardwareAddr.String()]; t != nil {
			w.set(t, kFDB, newEntry && ip == t.s.vtep, at)
		}
	}
}

// set records that t has (on) or lacks entry k since at; the caller
// holds mu.
func (w *kernelWatch) set(t *track, k uint8, on bool, at time.Time) {
	w.events++
	was := t.have
	if on {
		t.have |= k
	} else {
		t.have &^= k
	}
	if t.have == was {
		return
	}
	i := bits.TrailingZeros8(k)
	if on {
		w.counts[i]++
	} else {
		w.counts[i]--
	}
	switch {
	case t.have == kAll:
		w.full++
		t.full, w.lastFull = at, at
		if w.first.IsZero() {
			w.first = at
		}
	case was == kAll:
		w.full--
	}
	if t.have == 0 {
		t.empty = at
	}
	w.signal()
}

// errLate is wrapped by waitUntil when its limit passed.
var errLate = errors.New("too late")

// trackOf returns the track of s, nil if not expected.
func (w *kernelWatch) trackOf(s sim) *track {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bySubnet[s.subnet]
}

// waitUntil waits until cond, called with mu held, holds; it fails when
// ctx ends, limit passes or a subscription broke.
func (w *kernelWatch) waitUntil(ctx context.Context, limit time.Duration, what string, cond func() bool) error {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		w.mu.Lock()
		ok, err, changed := cond(), w.err, w.changed
		w.mu.Unlock()
		switch {
		case ok:
			return nil
		case err != nil:
			return fmt.Errorf("%s: %w", what, err)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", what, ctx.Err())
		case <-timer.C:
			return fmt.Errorf("%s: not within %v: %w", what, limit, errLate)
		}
	}
}

// waitFull waits until t has all three entries and returns when they were
// complete.
func (w *kernelWatch) waitFull(ctx context.Context, t *track, limit time.Duration) (time.Time, error) {
	err := w.waitUntil(ctx, limit, "all three entries of "+t.s.host, func() bool { return t.have == kAll })
	w.mu.Lock()
	defer w.mu.Unlock()
	return t.full, err
}

// waitEmpty waits until t has none of its entries and returns when the
// last went.
func (w *kernelWatch) waitEmpty(ctx context.Context, t *track, limit time.Duration) (time.Time, error) {
	err := w.waitUntil(ctx, limit, "no entry left of "+t.s.host, func() bool { return t.have == 0 })
	w.mu.Lock()
	defer w.mu.Unlock()
	return t.empty, err
}

// seen is what the notifications say the kernel holds for the expected
// hosts.
type seen struct {
	full           int // hosts with all three entries
	routes, neighs int
	fdb            int
	events         int
	lastFull       time.Time
	firstFull      time.Time
}

func (w *kernelWatch) seen() seen {
	w.mu.Lock()
	defer w.mu.Unlock()
	return seen{full: w.full, routes: w.counts[0], neighs: w.counts[1], fdb: w.counts[2], events: w.events, lastFull: w.lastFull, firstFull: w.first}
}

// dumped is the device's entries as a netlink dump reads them.
type dumped struct {
	routes, neighs, fdb int // agent-made: routes (not proto kernel), permanent neighbours, FDB remotes
	peers               int // live simulated hosts with exactly their three entries
	live                int
}

func (d dumped) String() string {
	return fmt.Sprintf("routes %d, neighbours %d, fdb %d; %d of %d live peers with all three", d.routes, d.neighs, d.fdb, d.peers, d.live)
}

// perPeer is the entries per live peer (3 is right).
func (d dumped) perPeer() float64 {
	if d.live == 0 {
		return 0
	}
	return float64(d.routes+d.neighs+d.fdb) / float64(d.live)
}

// dumpEntries reads the agent's device in ns, as the agent itself reads
// it (vxlan.Entries), and checks them against the live hosts.
//
// Equivalent: ip -n $ns route show dev $dev; ip -n $ns neigh show dev $dev nud permanent; bridge -n $ns fdb show dev $dev
func dumpEntries(ns *lab.NS, live []sim) (dumped, error) {
	n, err := netns.Open(ns.Path)
	if err != nil {
		return dumped{}, err
	}
	defer n.Close()
	name := vxlan.DeviceName(networkName)
	l, err := n.Netlink().LinkByName(name)
	if err != nil {
		return dumped{}, fmt.Errorf("vxlan device %s in %s: %w", name, ns.Name, err)
	}
	e, err := vxlan.Entries(n, vxlan.Device{Name: name, Index: l.Attrs().Index})
	if err != nil {
		return dumped{}, err
	}
	d := dumped{routes: len(e.Routes), fdb: len(e.FDB), live: len(live)}
	routes := map[netip.Prefix]netip.Addr{}
	for _, r := range e.Routes {
		routes[r.Dst] = r.Via
	}
	neighs := map[netip.Addr]string{}
	for _, nb := range e.Neighs {
		if nb.Permanent {
			d.neighs++
			neighs[nb.IP] = nb.MAC
		}
	}
	fdb := map[string][]netip.Addr{}
	for _, f := range e.FDB {
		fdb[f.MAC] = append(fdb[f.MAC], f.Dst)
	}
	for _, s := range live {
		if via, ok := routes[s.subnet]; ok && via == s.addr && neighs[s.addr] == s.mac &&
			len(fdb[s.mac]) == 1 && fdb[s.mac][0] == s.vtep {
			d.peers++
		}
	}
	return d, nil
}
