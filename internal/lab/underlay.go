package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
)

// The underlay of a multi-host lab, from RFC 1918 space nothing here routes.
var (
	UnderlayNet     = netip.MustParsePrefix("192.168.77.0/24")
	UnderlayGateway = netip.MustParsePrefix("192.168.77.1/24") // on the underlay's bridge
)

// Underlay link names: the bridge in the underlay namespace, and each
// host's end of its veth to it (the host's "NIC").
const (
	UnderlayBridge   = "ul0"
	HostUnderlayName = "eth0"
)

// Underlay is a multi-host lab: "host" namespaces joined by an L2 network,
// a bridge in an "underlay" namespace with a veth to each host. The
// underlay namespace holds UnderlayGateway, every host's default route
// points at it, and it has no route to anything else: it stands in for
// the outside world too (a container reaches it only through its host's
// masquerade). Names are "<prefix>-<pid>-<id>-<role>", as World's.
type Underlay struct {
	Prefix string
	ID     string
	NS     *NS

	mu    sync.Mutex
	hosts []*NS
	extra []*NS
}

// NewUnderlay creates the underlay namespace and its bridge.
func NewUnderlay(ctx context.Context, prefix string) (u *Underlay, err error) {
	u = &Underlay{Prefix: prefix, ID: RandomSuffix(6)}
	defer func() {
		if err != nil {
			err = errors.Join(err, u.Close())
			u = nil
		}
	}()
	if u.NS, err = NewNS(ctx, u.name("ul")); err != nil {
		return u, err
	}
	if err := u.NS.AddBridge(UnderlayBridge); err != nil {
		return u, err
	}
	if err := u.NS.AddAddr(UnderlayBridge, UnderlayGateway); err != nil {
		return u, err
	}
	return u, nil
}

func (u *Underlay) name(role string) string {
	return fmt.Sprintf("%s-%d-%s-%s", u.Prefix, os.Getpid(), u.ID, role)
}

// HostAddr is the underlay address of host i (1-based): 192.168.77.(10+i).
func HostAddr(i int) netip.Prefix {
	a := UnderlayNet.Addr().As4()
	a[3] = byte(10 + i)
	return netip.PrefixFrom(netip.AddrFrom4(a), UnderlayNet.Bits())
}

// AddHost creates host i's namespace "<…>-h<i>", joins it to the underlay
// by a veth (HostUnderlayName in the host, a port of the bridge) with
// HostAddr(i), and routes its default through the underlay.
func (u *Underlay) AddHost(ctx context.Context, i int) (*NS, error) {
	h, err := NewNS(ctx, u.name(fmt.Sprintf("h%d", i)))
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	u.hosts = append(u.hosts, h)
	u.mu.Unlock()
	port := fmt.Sprintf("ulp%d", i)
	if err := Veth(VethEnd{NS: h, Name: HostUnderlayName, Addrs: []netip.Prefix{HostAddr(i)}}, VethEnd{NS: u.NS, Name: port}); err != nil {
		return nil, err
	}
	if err := u.NS.SetMaster(port, UnderlayBridge); err != nil {
		return nil, err
	}
	if err := u.NS.LinkUp(UnderlayBridge); err != nil {
		return nil, err
	}
	if err := h.AddDefaultRoute(UnderlayGateway.Addr()); err != nil {
		return nil, err
	}
	return h, nil
}

// AddNS creates one more namespace "<…>-<role>" (a container, say) that
// Close deletes.
func (u *Underlay) AddNS(ctx context.Context, role string) (*NS, error) {
	n, err := NewNS(ctx, u.name(role))
	if err != nil {
		return nil, err
	}
	u.mu.Lock()
	u.extra = append(u.extra, n)
	u.mu.Unlock()
	return n, nil
}

// Close deletes every namespace of the lab (containers first, then hosts,
// then the underlay), killing processes started in them.
func (u *Underlay) Close() error {
	u.mu.Lock()
	all := append(append(u.extra, u.hosts...), u.NS)
	u.extra, u.hosts, u.NS = nil, nil, nil
	u.mu.Unlock()
	var errs []error
	for _, n := range all {
		if n != nil {
			errs = append(errs, n.Delete())
		}
	}
	return errors.Join(errs...)
}

// AddBridge creates bridge name, up.
//
// Equivalent: ip -n $ns link add $name type bridge; ip -n $ns link set $name up
func (n *NS) AddBridge(name string) error {
	err := n.withHandle(func(h *netlink.Handle) error {
		return h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}})
	})
	if err != nil {
		return fmt.Errorf("add bridge %s in %s: %w", name, n.Name, err)
	}
	return n.LinkUp(name)
}

// SetMaster makes link a port of bridge.
//
// Equivalent: ip -n $ns link set $link master $bridge
func (n *NS) SetMaster(link, bridge string) error {
	return n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", link, n.Name, err)
		}
		br, err := h.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", bridge, n.Name, err)
		}
		if err := h.LinkSetMaster(l, br); err != nil {
			return fmt.Errorf("set master of %s to %s in %s: %w", link, bridge, n.Name, err)
		}
		return nil
	})
}
