// Package agent is the overlay node agent (cmd/berth-overlayd parses its
// flags and runs it): one per host and overlay network. It holds the
// host's subnet lease in the cluster store, keeps the network's VXLAN
// device and one route, neighbour and FDB entry per remote host in step
// with the store's leases, writes the local state file the overlay plugin
// reads, and answers /healthz and /metrics.
//
// It touches: the store it is given; through package vxlan, the links,
// routes, neighbours and FDB entries of the network namespace it is given,
// and that namespace's ip_forward; the file <StateDir>/<network>.json; the
// listener it is given. What to program comes from package peerplan.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/overlay"
	"github.com/berth-cni/berth/pkg/overlay/ack"
	"github.com/berth-cni/berth/pkg/overlay/espplan"
	"github.com/berth-cni/berth/pkg/overlay/peerplan"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/vxlan"
)

// Config is one agent's settings; cmd/berth-overlayd fills it from flags.
type Config struct {
	Network store.Network // the same on every host
	Node    string        // this host's name in the store
	// Underlay is the interface the VXLAN packets leave by; "" means the
	// interface of the IPv4 default route.
	Underlay string
	// VTEP is this host's underlay address; invalid means the underlay's
	// first global IPv4 address.
	VTEP netip.Addr
	// MTU of the VXLAN device (and the containers); 0 means the underlay's
	// less vxlan.Overhead.
	MTU           int
	StateDir      string        // where the Local file goes: overlay.DefaultStateDir
	LeaseTTL      time.Duration // at least 1s
	ReleaseOnExit bool          // delete the lease when Run ends; else it expires after LeaseTTL
	Store         store.Store   // Run does not close it
	// Listener serves /healthz and /metrics; nil serves nothing. Run
	// closes it.
	Listener net.Listener
	// Netns is the network namespace to program (a path such as
	// /var/run/netns/NAME); "" is the namespace the process started in
	// (netns.Host), what a process running in its host's namespace wants.
	Netns string
	Log   io.Writer // one line per event; nil discards
	// Resync is how often the kernel is read back and compared with the
	// peers, which repairs what someone else changed (a deleted route,
	// the device itself); 0 means DefaultResync. Between resyncs a change
	// costs only the kernel requests of the peers it changed.
	Resync time.Duration
	// AckBound is how long the agent, after writing its lease, waits for
	// a peer to acknowledge having it in its kernel before it reports the
	// peer and waits no more; 0 means ack.DefaultBound.
	AckBound time.Duration
}

func (c Config) validate() error {
	if err := c.Network.Validate(); err != nil {
		return err
	}
	switch {
	case c.Node == "":
		return errors.New("overlay agent: a node name is required")
	case c.VTEP.IsValid() && !c.VTEP.Is4():
		return fmt.Errorf("overlay agent: vtep %s: only IPv4 is supported", c.VTEP)
	case c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535):
		return fmt.Errorf("overlay agent: mtu %d: must be between 576 and 65535", c.MTU)
	case c.StateDir == "":
		return errors.New("overlay agent: a state directory is required")
	case c.LeaseTTL < time.Second:
		return fmt.Errorf("overlay agent: lease ttl %v: must be at least 1s", c.LeaseTTL)
	case c.Store == nil:
		return errors.New("overlay agent: a store is required")
	case c.Resync < 0:
		return fmt.Errorf("overlay agent: resync %v: must not be negative", c.Resync)
	case c.AckBound < 0:
		return fmt.Errorf("overlay agent: ack bound %v: must not be negative", c.AckBound)
	}
	return nil
}

// Retry delays after a failed store call or sync: doubled from
// retryMin up to retryMax, reset by a success.
const (
	retryMin = 200 * time.Millisecond
	retryMax = 5 * time.Second
)

// DefaultResync is Config.Resync's default.
const DefaultResync = time.Minute

// Agent runs the overlay on one host for one network.
type Agent struct {
	cfg Config
	log *log.Logger
	st  status

	// Owned by Run's goroutine.
	ns    *netns.NS
	spec  vxlan.DeviceSpec
	dev   vxlan.Device
	hold  store.Hold
	local overlay.Local
	peers []peerplan.Peer
	delay time.Duration // the next retry delay

	// The store as the watch has told it, and how far the kernel follows.
	leases    map[netip.Prefix]store.Lease // by subnet, every host's
	acks      map[netip.Prefix]ack.Peer    // what each lease says of the acknowledgement protocol
	rev       int64                        // the watch's revision, applied to leases
	synced    int64                        // the revision the kernel holds the peers of (0: none yet)
	kernelOK  bool                         // the kernel holds exactly a.peers (else the next sync reads it back)
	published int64                        // the ack.Sync this host last published
	wait      *ack.Wait                    // this host's wait for acknowledgements, if any
	late      []string                     // the peers the last wait gave up on
	acquired  int64                        // the revision of this host's last Acquire: what a peer has synced when it acknowledges it

	esp *espState // the encrypted overlay's state; nil for a plain network
}

// New checks cfg and returns an agent ready to Run.
func New(cfg Config) (*Agent, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	w := cfg.Log
	if w == nil {
		w = io.Discard
	}
	a := &Agent{cfg: cfg, log: log.New(w, fmt.Sprintf("overlay %s: ", cfg.Network.Name), log.LstdFlags|log.Lmsgprefix)}
	a.st.network, a.st.vni, a.st.reason = cfg.Network.Name, cfg.Network.VNI, "starting"
	return a, nil
}

// fatal marks an error that no retry can fix: the store holds another
// config for the network.
type fatal struct{ err error }

func (f fatal) Error() string { return f.err.Error() }
func (f fatal) Unwrap() error { return f.err }

// Run brings the overlay up on this host and keeps it in step with the
// store until ctx ends: then it marks the Local file not ready ("agent
// stopped"), releases the lease if so configured and returns nil. The
// VXLAN device and its entries stay, so that a restarted agent (which
// keeps its subnet) finds them and containers keep their traffic. It
// returns an error only for what a restart cannot fix by waiting: bad
// host settings (no underlay, no VTEP) or a network config in the store
// that differs from this agent's.
func (a *Agent) Run(ctx context.Context) error {
	// One agent per network and state dir; plugins read its liveness
	// from this lock, held until Run returns (or the process dies).
	unlock, err := overlay.LockAgent(a.cfg.StateDir, a.cfg.Network.Name)
	if err != nil {
		if a.cfg.Listener != nil {
			a.cfg.Listener.Close()
		}
		return fatal{err}
	}
	defer unlock()
	if a.cfg.Listener != nil {
		srv := &http.Server{Handler: a.st.handler(), ReadHeaderTimeout: 5 * time.Second}
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := srv.Serve(a.cfg.Listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
				a.log.Printf("http: %v", err)
			}
		}()
		defer func() {
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer cancel()
			_ = srv.Shutdown(sctx)
			<-served
		}()
	}
	ns, err := openNS(a.cfg.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	a.ns = ns
	if err := a.start(ctx); err != nil {
		if ctx.Err() != nil {
			return a.stop()
		}
		a.setReady(false, err.Error())
		return err
	}
	return a.loop(ctx)
}

// start resolves the underlay, stores or checks the network config,
// ensures the device, acquires the lease, gives the device its address
// and turns forwarding on. The Local file says "starting" meanwhile.
func (a *Agent) start(ctx context.Context) error {
	n := a.cfg.Network
	u, err := vxlan.FindUnderlay(a.ns, a.cfg.Underlay)
	if err != nil {
		return err
	}
	vtep := a.cfg.VTEP
	if !vtep.IsValid() {
		if vtep = u.Addr; !vtep.IsValid() {
			return fmt.Errorf("underlay %s has no global IPv4 address to use as VTEP (set one)", u.Name)
		}
	}
	overhead := vxlan.Overhead
	if n.Encrypted() {
		overhead = u.MTU - espplan.InnerMTU(u.MTU)
	}
	mtu := a.cfg.MTU
	if mtu == 0 {
		mtu = u.MTU - overhead
	} else if mtu > u.MTU-overhead {
		a.log.Printf("warning: mtu %d is above what underlay %s carries (%d − %d): large packets will be dropped", mtu, u.Name, u.MTU, overhead)
	}
	a.spec = vxlan.DeviceSpec{
		Name: vxlan.DeviceName(n.Name), Alias: vxlan.AliasFor(n.Name),
		VNI: n.VNI, Port: n.Port, Local: vtep, Underlay: u.Index, MTU: mtu,
	}
	a.local = overlay.Local{Network: n.Name, CIDR: n.CIDR, MTU: mtu, VNI: n.VNI, Device: a.spec.Name, PID: os.Getpid()}
	// The subnet of the last run: asked for again, and kept in the file
	// until the store answers (DEL needs it).
	if prev, err := overlay.ReadLocal(a.cfg.StateDir, n.Name); err == nil && n.HasSubnet(prev.Subnet) {
		a.setSubnet(prev.Subnet)
	}
	a.setReady(false, "starting")
	a.log.Printf("starting: node %s, underlay %s (index %d, mtu %d), vtep %s, vni %d, port %d, device %s",
		a.cfg.Node, u.Name, u.Index, u.MTU, vtep, n.VNI, n.Port, a.spec.Name)

	if err := a.retry(ctx, "store the network config", a.ensureNetwork); err != nil {
		return err
	}
	// The guard before the device: no packet of the network ever leaves
	// in the clear. A plain network loses what an encrypted past left.
	if n.Encrypted() {
		if err := a.startESP(ctx, vtep); err != nil {
			return err
		}
	} else {
		a.removeESP(vtep)
	}
	if err := a.ensureDevice(); err != nil { // before the lease: the lease carries the device's MAC
		return err
	}
	if err := a.acquire(ctx, a.local.Subnet); err != nil {
		return err
	}
	// Traffic between the VXLAN device and the containers' bridge is
	// routed.
	if err := a.ns.EnsureSysctl("ipv4/ip_forward", "1"); err != nil {
		return err
	}
	a.setReady(false, "programming peers")
	return nil
}

// ensureNetwork stores the network config or checks the stored one.
func (a *Agent) ensureNetwork(ctx context.Context) error {
	n := a.cfg.Network
	stored, err := a.cfg.Store.EnsureNetwork(ctx, n)
	if errors.Is(err, store.ErrConflict) {
		return fatal{fmt.Errorf("overlay network %q is stored with %s; this agent has %s: refusing to run (fix the flags, or remove the network from the store if no host uses it): %w",
			n.Name, describe(stored), describe(n), err)}
	}
	return err
}

// describe is a network's config as its flags name it.
func describe(n store.Network) string {
	enc := "no -encrypt"
	if n.Encrypted() {
		enc = fmt.Sprintf("-encrypt -key-rotation %v", n.KeyRotation)
	}
	return fmt.Sprintf("cidr %s, subnet-len %d, vni %d, port %d, %s", n.CIDR, n.SubnetLen, n.VNI, n.Port, enc)
}

// ensureDevice makes the device match a.spec. When it had to be created
// again (someone deleted or changed it), its MAC changed: the caller
// re-acquires the lease to publish the new one.
func (a *Agent) ensureDevice() error {
	dev, err := vxlan.EnsureDevice(a.ns, a.spec)
	if err != nil {
		return err
	}
	switch {
	case dev.Replaced != "":
		a.log.Printf("recreated vxlan device %s: the old one was incompatible (%s); mac %s", dev.Name, dev.Replaced, dev.MAC)
	case dev.Created:
		a.log.Printf("created vxlan device %s, mac %s, mtu %d", dev.Name, dev.MAC, dev.MTU)
	}
	a.dev = dev
	return nil
}

// acquire leases a subnet, preferring want, retrying until it succeeds or
// ctx ends, then gives the device the subnet's address and begins the
// wait for the peers' acknowledgements of the lease.
func (a *Agent) acquire(ctx context.Context, want netip.Prefix) error {
	lease := store.Lease{Subnet: want, Host: a.cfg.Node, VTEP: a.spec.Local, MAC: a.dev.MAC.String()}
	if a.esp != nil {
		// A new generation goes in the Acquire itself: a peer that
		// acknowledges it has seen it (and made its receive SAs again).
		var err error
		if lease.Attrs, err = a.espGeneration(); err != nil {
			return err
		}
	}
	err := a.retry(ctx, "acquire a subnet lease", func(ctx context.Context) error {
		if err := a.ensureNetwork(ctx); err != nil {
			return err
		}
		h, err := a.cfg.Store.Acquire(ctx, a.cfg.Network.Name, lease, a.cfg.LeaseTTL)
		if err != nil {
			return err
		}
		a.hold = h
		return nil
	})
	if err != nil {
		return err
	}
	got := a.hold.Lease().Subnet
	if want.IsValid() && got != want {
		a.log.Printf("leased %s, not %s as before: containers with addresses in %s lose their connectivity; restart them", got, want, want)
	} else {
		a.log.Printf("leased %s", got)
	}
	a.setSubnet(got)
	a.spec.Subnet = got
	a.writeLocal()
	if err := a.ensureDevice(); err != nil {
		return err
	}
	// Not ready until the peers have this lease in their kernels.
	if err := a.await(ctx); err != nil {
		a.st.update(func(s *status) { s.storeErrors++ })
		a.log.Printf("store: ask the peers to acknowledge lease %s: %v (waiting %v for them anyway)", got, err, a.wait.Bound)
	}
	return nil
}

// reacquire answers a lost lease: not ready until the same subnet (if
// still free) is held again and the peers synced.
func (a *Agent) reacquire(ctx context.Context) error {
	old := a.hold.Lease().Subnet
	a.st.update(func(s *status) { s.leaseLost++ })
	a.log.Printf("lease of %s lost (expired or taken in the store); acquiring it again", old)
	a.setReady(false, fmt.Sprintf("lease of %s lost; acquiring it again", old))
	return a.acquire(ctx, old)
}

// retry runs fn until it succeeds, fails fatally or ctx ends, counting
// each failure as a store error and logging it with the next delay.
func (a *Agent) retry(ctx context.Context, what string, fn func(context.Context) error) error {
	delay := retryMin
	for {
		err := fn(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if f := (fatal{}); errors.As(err, &f) {
			return err
		}
		a.st.update(func(s *status) { s.storeErrors++ })
		a.log.Printf("%s: %v (retrying in %v)", what, err, delay)
		if !a.local.Ready {
			a.setReady(false, what+": "+err.Error())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, retryMax)
	}
}

// openNS opens the namespace at path, or the process's own for "".
func openNS(path string) (*netns.NS, error) {
	if path == "" {
		return netns.Host()
	}
	return netns.Open(path)
}

// candidate is the peer a lease describes, as stored: PlanPeers checks
// and normalises it.
func candidate(l store.Lease) peerplan.Peer {
	return peerplan.Peer{Host: l.Host, Subnet: l.Subnet, VTEP: l.VTEP, MAC: l.MAC}
}

func candidates(leases []store.Lease) []peerplan.Peer {
	cs := make([]peerplan.Peer, len(leases))
	for i, l := range leases {
		cs[i] = candidate(l)
	}
	return cs
}

// diffPeers says, one line per peer, who came, went or changed between
// two peer lists.
func diffPeers(old, cur []peerplan.Peer) []string {
	was := map[netip.Prefix]peerplan.Peer{}
	for _, p := range old {
		was[p.Subnet] = p
	}
	var lines []string
	for _, p := range cur {
		o, ok := was[p.Subnet]
		delete(was, p.Subnet)
		switch {
		case !ok:
			lines = append(lines, fmt.Sprintf("peer added: host %s subnet %s vtep %s mac %s", p.Host, p.Subnet, p.VTEP, p.MAC))
		case o != p:
			lines = append(lines, fmt.Sprintf("peer changed: host %s subnet %s vtep %s mac %s (was host %s vtep %s mac %s)", p.Host, p.Subnet, p.VTEP, p.MAC, o.Host, o.VTEP, o.MAC))
		}
	}
	for _, p := range old {
		if _, ok := was[p.Subnet]; ok {
			lines = append(lines, fmt.Sprintf("peer removed: host %s subnet %s", p.Host, p.Subnet))
		}
	}
	return lines
}

// stop marks the agent stopped and, if so configured, releases the lease.
func (a *Agent) stop() error {
	a.setReady(false, "agent stopped")
	if a.cfg.ReleaseOnExit && a.hold != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := a.hold.Release(ctx); err != nil {
			a.log.Printf("release the lease of %s: %v", a.hold.Lease().Subnet, err)
		} else {
			a.log.Printf("released the lease of %s", a.hold.Lease().Subnet)
		}
	}
	a.log.Printf("stopped")
	return nil
}

// setSubnet records the host's subnet in the Local file's values and the
// status.
func (a *Agent) setSubnet(p netip.Prefix) {
	a.local.Subnet, a.local.Gateway = p, p.Masked().Addr().Next()
	a.st.update(func(s *status) { s.subnet = p })
}

// setReady records readiness and writes the Local file when anything
// changed; Since moves only when Ready flips.
func (a *Agent) setReady(ready bool, reason string) {
	if ready {
		reason = ""
	}
	if a.local.Ready == ready && a.local.Reason == reason && !a.local.Since.IsZero() {
		return
	}
	if a.local.Ready != ready || a.local.Since.IsZero() {
		a.local.Since = time.Now()
		if ready {
			a.log.Printf("ready: subnet %s, gateway %s, device %s, mtu %d", a.local.Subnet, a.local.Gateway, a.local.Device, a.local.MTU)
		} else if a.local.Ready {
			a.log.Printf("not ready: %s", reason)
		}
	}
	a.local.Ready, a.local.Reason = ready, reason
	a.st.update(func(s *status) { s.ready, s.reason = ready, reason })
	a.writeLocal()
}

func (a *Agent) writeLocal() {
	if err := overlay.WriteLocal(a.cfg.StateDir, a.local); err != nil {
		a.log.Printf("%v", err)
	}
}
