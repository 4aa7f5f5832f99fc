package bridgecmd

import (
	"context"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/plan"
	"github.com/berth-cni/berth/pkg/spoof"
)

// Kernel is what the bridge commands change in the host's namespace, and
// the way into a container's. The real one (NewKernel) is netlink and
// nftables in the namespaces it opened; the package's tests use a fake
// that keeps state and writes a transcript of every call.
type Kernel interface {
	EnsureBridge(spec link.BridgeSpec) (br *netlink.Bridge, created bool, err error)
	DeleteBridgeIfUnused(name string) error
	AddVeth(c Container, spec link.VethSpec) (link.Veth, error)
	DeleteHostVeth(name string) error
	HostLinkExists(name string) (bool, error)
	ListHostVeths(network string) ([]link.HostVeth, error)
	CheckHostVeth(name, bridge string) error
	EnsureVlanGateway(br *netlink.Bridge, vlan int, preserveVID bool) (netlink.Link, error)
	EnsureGatewayAddr(l netlink.Link, gw netip.Prefix, force bool) error
	EnableForwarding(a netip.Addr) error

	EnsureSpoof(g spoof.Guard) error
	// DeleteSpoof removes o's rule; with linkGone (non-nil) it keeps its
	// socket open until linkGone is closed (spoof.DeleteAfter).
	DeleteSpoof(o owner.Owner, linkGone <-chan struct{}) error
	HasSpoof(o owner.Owner) (bool, error)

	// Masq is the masquerade backend called name; DetectMasq picks one
	// for a config that names none.
	Masq(name string) (nat.Backend, error)
	DetectMasq() string

	// OpenContainer opens the container's namespace from CNI_NETNS (see
	// link.OpenContainer: it wraps netns.ErrGone when there is none).
	OpenContainer(path string) (Container, error)
	Close() error
}

// Container is the container's side of an attachment.
type Container interface {
	RefuseTakenIfName(ifName string) error
	LinkExists(name string) (bool, error)
	Configure(spec plan.Container) error
	Check(spec plan.Container) error
	Close() error
}

// NewKernel is the real Kernel: netlink and nftables in the namespace the
// process started in (the host's).
func NewKernel() (Kernel, error) {
	host, err := netns.Host()
	if err != nil {
		return nil, err
	}
	return hostKernel{host}, nil
}

type hostKernel struct{ host *netns.NS }

func (k hostKernel) EnsureBridge(spec link.BridgeSpec) (*netlink.Bridge, bool, error) {
	return link.EnsureBridge(k.host, spec)
}
func (k hostKernel) DeleteBridgeIfUnused(name string) error {
	return link.DeleteBridgeIfUnused(k.host, name)
}
func (k hostKernel) AddVeth(c Container, spec link.VethSpec) (link.Veth, error) {
	spec.Container = c.(container).ns
	return link.AddVeth(k.host, spec)
}
func (k hostKernel) DeleteHostVeth(name string) error { return link.DeleteHostVeth(k.host, name) }
func (k hostKernel) HostLinkExists(name string) (bool, error) {
	return link.Exists(k.host, name)
}
func (k hostKernel) ListHostVeths(network string) ([]link.HostVeth, error) {
	return link.ListHostVeths(k.host, network)
}
func (k hostKernel) CheckHostVeth(name, bridge string) error {
	return link.CheckHostVeth(k.host, name, bridge)
}
func (k hostKernel) EnsureVlanGateway(br *netlink.Bridge, vlan int, preserveVID bool) (netlink.Link, error) {
	return link.EnsureVlanGateway(k.host, br, vlan, preserveVID)
}
func (k hostKernel) EnsureGatewayAddr(l netlink.Link, gw netip.Prefix, force bool) error {
	return link.EnsureGatewayAddr(k.host, l, gw, force)
}
func (k hostKernel) EnableForwarding(a netip.Addr) error { return link.EnableForwarding(k.host, a) }
func (k hostKernel) EnsureSpoof(g spoof.Guard) error     { return spoof.Ensure(k.host, g) }
func (k hostKernel) DeleteSpoof(o owner.Owner, linkGone <-chan struct{}) error {
	return spoof.DeleteAfter(k.host, o, linkGone)
}
func (k hostKernel) HasSpoof(o owner.Owner) (bool, error) {
	return spoof.Has(k.host, o)
}
func (k hostKernel) Masq(name string) (nat.Backend, error) { return nat.New(k.host, name) }
func (k hostKernel) DetectMasq() string                    { return nat.Detect(k.host) }
func (k hostKernel) Close() error                          { return k.host.Close() }

func (k hostKernel) OpenContainer(path string) (Container, error) {
	n, err := link.OpenContainer(path)
	if err != nil {
		return nil, err
	}
	return container{n}, nil
}

type container struct{ ns *netns.NS }

func (c container) RefuseTakenIfName(ifName string) error {
	return link.RefuseTakenIfName(c.ns, ifName)
}
func (c container) LinkExists(name string) (bool, error) { return link.Exists(c.ns, name) }
func (c container) Configure(spec plan.Container) error  { return link.ConfigureContainer(c.ns, spec) }
func (c container) Check(spec plan.Container) error      { return link.CheckContainer(c.ns, spec) }
func (c container) Close() error                         { return c.ns.Close() }

// IPAM is how the bridge commands reach the IPAM plugin (pkg/ipam: the
// plugin named in the config, exec'd, or host-local in-process); the
// package's tests use a fake.
type IPAM interface {
	Prepare(plugin string, netconf []byte, a ipam.Attachment) Lease
	DelKnown(ctx context.Context, plugin string, netconf []byte, a ipam.Attachment, addrs []netip.Addr) error
	ReleaseFor(ctx context.Context, plugin string, netconf []byte, path, containerID, ifName string) error
	Check(ctx context.Context, plugin string, netconf []byte, a ipam.Attachment) error
	Status(ctx context.Context, plugin string, netconf []byte, path string) error
	GC(ctx context.Context, plugin string, netconf []byte, path string) error
}

// Lease is an IPAM ADD begun by Prepare (see ipam.Prepared).
type Lease interface {
	Lease(ctx context.Context, fresh bool) (*current.Result, error)
	Close()
}

// pluginIPAM is pkg/ipam.
type pluginIPAM struct{}

func (pluginIPAM) Prepare(plugin string, netconf []byte, a ipam.Attachment) Lease {
	return ipam.Prepare(plugin, netconf, a)
}
func (pluginIPAM) DelKnown(ctx context.Context, plugin string, netconf []byte, a ipam.Attachment, addrs []netip.Addr) error {
	return ipam.DelKnown(ctx, plugin, netconf, a, addrs)
}
func (pluginIPAM) ReleaseFor(ctx context.Context, plugin string, netconf []byte, path, containerID, ifName string) error {
	return ipam.ReleaseFor(ctx, plugin, netconf, path, containerID, ifName)
}
func (pluginIPAM) Check(ctx context.Context, plugin string, netconf []byte, a ipam.Attachment) error {
	return ipam.Check(ctx, plugin, netconf, a)
}
func (pluginIPAM) Status(ctx context.Context, plugin string, netconf []byte, path string) error {
	return ipam.Status(ctx, plugin, netconf, path)
}
func (pluginIPAM) GC(ctx context.Context, plugin string, netconf []byte, path string) error {
	return ipam.GC(ctx, plugin, netconf, path)
}
