package bridgecmd

// A recording fake of what the bridge commands change: it keeps the state
// a real host would have (bridges, veths, addresses, rules, leases) and
// writes every call to a transcript in the syntax of the command a person
// would type for it, so a test reads what an ADD does as text and compares
// it with a golden file. Steps that run in the background (the lease, the
// masquerade) write to transcripts of their own, so each transcript is in
// a fixed order.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/plan"
	"github.com/berth-cni/berth/pkg/spoof"
)

// transcript is one stream of recorded calls.
type transcript struct {
	mu    sync.Mutex
	lines []string
}

func (t *transcript) log(format string, args ...any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.lines = append(t.lines, fmt.Sprintf(format, args...))
}

func (t *transcript) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.Join(t.lines, "\n")
}

// fakeHost is the state of one host, shared by every command a test runs.
type fakeHost struct {
	mu         sync.Mutex
	kernel     transcript // the main flow: links, addresses, rules
	masq, ipam transcript // the background steps' own
	bridges    map[string]*netlink.Bridge
	addrs      map[string][]netip.Prefix // by link
	veths      map[string]link.HostVeth
	spoofs     map[owner.Owner]string
	masqs      map[owner.Owner][]netip.Prefix
	leases     map[string]string // address -> holder
	containers map[string]*fakeContainer
	nextIndex  int
	fail       map[string]error // a call to fail, by name
	closed     int
}

func newFakeHost() *fakeHost {
	return &fakeHost{
		bridges: map[string]*netlink.Bridge{}, addrs: map[string][]netip.Prefix{}, veths: map[string]link.HostVeth{},
		spoofs: map[owner.Owner]string{}, masqs: map[owner.Owner][]netip.Prefix{}, leases: map[string]string{},
		containers: map[string]*fakeContainer{}, nextIndex: 10, fail: map[string]error{},
	}
}

// failing returns the error injected for call, if any.
func (h *fakeHost) failing(call string) error {
	if err := h.fail[call]; err != nil {
		return fmt.Errorf("%s: %w", call, err)
	}
	return nil
}

// container makes a container namespace at path with lo in it.
func (h *fakeHost) container(path string) *fakeContainer {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := &fakeContainer{h: h, path: path, links: map[string]*plan.Container{"lo": {IfName: "lo", Up: true}}}
	h.containers[path] = c
	return c
}

// plugin is Bridge with h as its kernel and IPAM, locks under lockDir.
func (h *fakeHost) plugin(lockDir string) Plugin {
	p := Bridge
	p.Kernel = func() (Kernel, error) { return fakeKernel{h}, nil }
	p.IPAM = fakeIPAM{h}
	p.LockDir = lockDir
	return p
}

// state renders what the host holds, sorted.
func (h *fakeHost) state() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for name, br := range h.bridges {
		out = append(out, fmt.Sprintf("bridge %s index %d addrs %v", name, br.Index, h.addrs[name]))
	}
	for name, v := range h.veths {
		out = append(out, fmt.Sprintf("veth %s master %d alias %s", name, v.Master, v.Owner.Alias()))
	}
	for o, mac := range h.spoofs {
		out = append(out, fmt.Sprintf("spoof %s %s", o, mac))
	}
	for o, a := range h.masqs {
		out = append(out, fmt.Sprintf("masquerade %s %v", o, a))
	}
	for a, who := range h.leases {
		out = append(out, fmt.Sprintf("lease %s %s", a, who))
	}
	for path, c := range h.containers {
		for name, l := range c.links {
			if name != "lo" {
				out = append(out, fmt.Sprintf("container %s link %s up %v addrs %v routes %v", path, name, l.Up, l.Addrs, l.Routes))
			}
		}
	}
	sort.Strings(out)
	return strings.Join(out, "\n")
}

type fakeKernel struct{ h *fakeHost }

func (k fakeKernel) EnsureBridge(spec link.BridgeSpec) (*netlink.Bridge, bool, error) {
	h := k.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if br, ok := h.bridges[spec.Name]; ok {
		return br, false, nil
	}
	if err := h.failing("EnsureBridge"); err != nil {
		return nil, false, err
	}
	h.nextIndex++
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: spec.Name, Index: h.nextIndex, MTU: 1500,
		HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, byte(h.nextIndex)}}}
	h.bridges[spec.Name] = br
	h.kernel.log("ip link add %s type bridge vlan_filtering %v; ip link set %s up", spec.Name, spec.VlanFiltering, spec.Name)
	return br, true, nil
}

func (k fakeKernel) DeleteBridgeIfUnused(name string) error {
	h := k.h
	h.mu.Lock()
	defer h.mu.Unlock()
	br, ok := h.bridges[name]
	if !ok {
		return nil
	}
	for _, v := range h.veths {
		if v.Master == br.Index {
			h.kernel.log("# bridge %s kept: it has ports", name)
			return nil
		}
	}
	delete(h.bridges, name)
	delete(h.addrs, name)
	h.kernel.log("ip link del %s", name)
	return nil
}

func (k fakeKernel) AddVeth(c Container, spec link.VethSpec) (link.Veth, error) {
	h := k.h
	h.mu.Lock()
	defer h.mu.Unlock()
	fc := c.(*fakeContainer)
	if err := h.failing("AddVeth"); err != nil {
		return link.Veth{}, err
	}
	if _, taken := fc.links[spec.Owner.IfName]; taken {
		return link.Veth{}, fmt.Errorf("create veth: %w", errors.New("file exists"))
	}
	v := link.Veth{HostName: spec.Owner.HostVeth(), HostMAC: net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}, ContainerMAC: spec.MAC}
	if v.ContainerMAC == nil {
		v.ContainerMAC = net.HardwareAddr{0x0a, 0, 0, 0, 0, 2}
	}
	h.veths[v.HostName] = link.HostVeth{Name: v.HostName, Owner: spec.Owner, Master: spec.Bridge.Index, Up: true}
	fc.links[spec.Owner.IfName] = &plan.Container{IfName: spec.Owner.IfName, MAC: v.ContainerMAC}
	h.kernel.log("ip link add %s address %s master %s type veth peer name %s address %s netns %s hairpin %v isolated %v vlan %d",
		v.HostName, v.HostMAC, spec.Bridge.Name, spec.Owner.IfName, v.ContainerMAC, fc.path, spec.Hairpin, spec.Isolated, spec.Vlan)
	h.kernel.log("ip link set %s up alias %s", v.HostName, spec.Owner.Alias())
	return v, nil
}

func (k fakeKernel) DeleteHostVeth(name string) error {
	h := k.h
	h.mu.Lock()
	defer h.mu.Unlock()
	v, ok := h.veths[name]
	if !ok {
		h.kernel.log("ip link del %s # not there", name)
		return nil
	}
	delete(h.veths, name)
	for _, c := range h.containers {
		delete(c.links, v.Owner.IfName) // the peer goes with it
	}
	h.kernel.log("ip link del %s", name)
	return nil
}

func (k fakeKernel) HostLinkExists(name string) (bool, error) {
	k.h.mu.Lock()
	defer k.h.mu.Unlock()
	_, ok := k.h.veths[name]
	return ok, nil
}

func (k fakeKernel) ListHostVeths(network string) ([]link.HostVeth, error) {
	k.h.mu.Lock()
	defer k.h.mu.Unlock()
	var out []link.HostVeth
	for _, v := range k.h.veths {
		if v.Owner.Network == network {
			out = append(out, v)
		}
	}
	slices.SortFunc(out, func(a, b link.HostVeth) int { return strings.Compare(a.Name, b.Name) })
	return out, nil
}

func (k fakeKernel) CheckHostVeth(name, bridge string) error {
	k.h.mu.Lock()
	defer k.h.mu.Unlock()
	v, ok := k.h.veths[name]
	if !ok {
		return fmt.Errorf("host veth %s not found", name)
	}
	if br := k.h.bridges[bridge]; br == nil || v.Master != br.Index {
		return fmt.Errorf("host veth %s is not attached to bridge %q", name, bridge)
	}
	return nil
}

func (k fakeKernel) EnsureVlanGateway(br *netlink.Bridge, vlan int, preserveVID bool) (netlink.Link, error) {
	name := link.VlanGatewayName(br.Name, vlan)
	k.h.kernel.log("ip link add %s type veth peer name %s; ip link set %s master %s; bridge vlan add dev %s vid %d pvid untagged master",
		link.VlanGatewayPortName(br.Name, vlan), name, link.VlanGatewayPortName(br.Name, vlan), br.Name, link.VlanGatewayPortName(br.Name, vlan), vlan)
	return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name, HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 1, byte(vlan)}}}, nil
}

func (k fakeKernel) EnsureGatewayAddr(l netlink.Link, gw netip.Prefix, force bool) error {
	h := k.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("EnsureGatewayAddr"); err != nil {
		return err
	}
	name := l.Attrs().Name
	if slices.Contains(h.addrs[name], gw) {
		return nil
	}
	h.addrs[name] = append(h.addrs[name], gw)
	h.kernel.log("ip addr add %s dev %s", gw, name)
	return nil
}

func (k fakeKernel) EnableForwarding(a netip.Addr) error {
	key := "net.ipv4.ip_forward"
	if a.Is6() {
		key = "net.ipv6.conf.all.forwarding"
	}
	k.h.kernel.log("sysctl -w %s=1", key)
	return nil
}

func (k fakeKernel) EnsureSpoof(g spoof.Guard) error {
	k.h.mu.Lock()
	defer k.h.mu.Unlock()
	k.h.spoofs[g.Owner] = g.MAC.String()
	k.h.kernel.log("nft add rule bridge berth-spoof prerouting iifname %s ether saddr != %s drop comment %q", g.HostVeth, g.MAC, spoof.Tag(g.Owner))
	return nil
}

func (k fakeKernel) DeleteSpoof(o owner.Owner, linkGone <-chan struct{}) error {
	k.h.mu.Lock()
	if _, ok := k.h.spoofs[o]; ok {
		delete(k.h.spoofs, o)
		k.h.kernel.log("nft delete rule bridge berth-spoof prerouting # %s", spoof.Tag(o))
	}
	k.h.mu.Unlock()
	if linkGone != nil {
		<-linkGone // as the real one: the socket stays open until the veth is gone
	}
	return nil
}

func (k fakeKernel) HasSpoof(o owner.Owner) (bool, error) {
	k.h.mu.Lock()
	defer k.h.mu.Unlock()
	_, ok := k.h.spoofs[o]
	return ok, nil
}

func (k fakeKernel) Masq(name string) (nat.Backend, error) { return fakeMasq{k.h, name}, nil }
func (k fakeKernel) DetectMasq() string                    { return "nftables" }

func (k fakeKernel) OpenContainer(path string) (Container, error) {
	k.h.mu.Lock()
	defer k.h.mu.Unlock()
	c, ok := k.h.containers[path]
	if !ok {
		return nil, cnierr.Env("CNI_NETNS", path, netns.ErrGone, "no such network namespace")
	}
	return c, nil
}

func (k fakeKernel) Close() error {
	k.h.mu.Lock()
	defer k.h.mu.Unlock()
	k.h.closed++
	return nil
}

type fakeContainer struct {
	h     *fakeHost
	path  string
	links map[string]*plan.Container // by name; the fields are the link's state
}

func (c *fakeContainer) RefuseTakenIfName(ifName string) error {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	if _, ok := c.links[ifName]; ok {
		return cnierr.Env("CNI_IFNAME", ifName, nil, "an interface of that name already exists in the container")
	}
	return nil
}

func (c *fakeContainer) LinkExists(name string) (bool, error) {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	_, ok := c.links[name]
	return ok, nil
}

func (c *fakeContainer) Configure(spec plan.Container) error {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	if err := c.h.failing("Configure"); err != nil {
		return err
	}
	l, ok := c.links[spec.IfName]
	if !ok {
		return fmt.Errorf("look up %s in container: not found", spec.IfName)
	}
	l.Addrs = append(l.Addrs, spec.Addrs...)
	l.Routes = append(l.Routes, spec.Routes...)
	l.Up = true
	for _, a := range spec.Addrs {
		c.h.kernel.log("ip -n %s addr add %s dev %s", c.path, a, spec.IfName)
	}
	c.h.kernel.log("ip -n %s link set %s up", c.path, spec.IfName)
	for _, r := range spec.Routes {
		via := "scope link"
		if r.GW.IsValid() {
			via = "via " + r.GW.String()
		}
		c.h.kernel.log("ip -n %s route add %s %s dev %s", c.path, r.Dst, via, spec.IfName)
	}
	return nil
}

func (c *fakeContainer) Check(spec plan.Container) error {
	c.h.mu.Lock()
	defer c.h.mu.Unlock()
	l, ok := c.links[spec.IfName]
	if !ok {
		return fmt.Errorf("interface %s not found in container %s", spec.IfName, c.path)
	}
	for _, a := range spec.Addrs {
		if !slices.Contains(l.Addrs, a) {
			return fmt.Errorf("address %s missing from %s", a, spec.IfName)
		}
	}
	return nil
}

func (c *fakeContainer) Close() error { return nil }

// fakeMasq is a masquerade backend over the host's state.
type fakeMasq struct {
	h       *fakeHost
	backend string
}

func (m fakeMasq) Ensure(q nat.Masq) error { return m.Add(q) }

func (m fakeMasq) Add(q nat.Masq) error {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	if err := m.h.failing("MasqAdd"); err != nil {
		return err
	}
	m.h.masqs[q.Owner] = q.Addrs
	for _, a := range q.Addrs {
		m.h.masq.log("%s: add element src %s comment \"berth p=%d if=%s id=%s\"", m.backend, a.Addr(), a.Bits(), q.Owner.IfName, q.Owner.ContainerID)
	}
	return nil
}

func (m fakeMasq) DeleteAfter(o owner.Owner, linkGone <-chan struct{}) error {
	err := m.Delete(o)
	if linkGone != nil {
		<-linkGone
	}
	return err
}

func (m fakeMasq) Delete(o owner.Owner) error {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	for _, a := range m.h.masqs[o] {
		m.h.masq.log("%s: delete element src %s", m.backend, a.Addr())
	}
	delete(m.h.masqs, o)
	return nil
}

func (m fakeMasq) List(network string) ([]nat.Masq, error) {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	var out []nat.Masq
	for o, a := range m.h.masqs {
		if o.Network == network {
			out = append(out, nat.Masq{Owner: o, Addrs: a})
		}
	}
	return out, nil
}

func (m fakeMasq) Check(q nat.Masq) error {
	m.h.mu.Lock()
	defer m.h.mu.Unlock()
	if !slices.Equal(m.h.masqs[q.Owner], q.Addrs) {
		return fmt.Errorf("masquerade of %s: have %v, want %v", q.Owner, m.h.masqs[q.Owner], q.Addrs)
	}
	return nil
}

// fakeIPAM leases from the config's ranges' first addresses, host-local
// style: the first free one from .2 on.
type fakeIPAM struct{ h *fakeHost }

func (f fakeIPAM) Prepare(plugin string, netconf []byte, a ipam.Attachment) Lease {
	return &fakeLease{h: f.h, plugin: plugin, a: a}
}

type fakeLease struct {
	h      *fakeHost
	plugin string
	a      ipam.Attachment
}

// ranges of the fake's leases: conflist/bridge.conflist's.
var fakeRanges = []netip.Prefix{netip.MustParsePrefix("10.88.0.0/16"), netip.MustParsePrefix("fd00:88::/64")}

func (l *fakeLease) Lease(ctx context.Context, fresh bool) (*current.Result, error) {
	h := l.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("Lease"); err != nil {
		return nil, err
	}
	who := l.a.ContainerID + "/" + l.a.IfName
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	for _, r := range fakeRanges {
		a := r.Addr().Next().Next()
		for h.leases[a.String()] != "" {
			a = a.Next()
		}
		h.leases[a.String()] = who
		h.ipam.log("%s: lease %s to %s (fresh %v)", l.plugin, a, who, fresh)
		res.IPs = append(res.IPs, &current.IPConfig{Address: *cidr.IPNet(netip.PrefixFrom(a, r.Bits())), Gateway: r.Addr().Next().AsSlice()})
	}
	return res, nil
}

func (l *fakeLease) Close() {}

func (f fakeIPAM) DelKnown(ctx context.Context, plugin string, netconf []byte, a ipam.Attachment, addrs []netip.Addr) error {
	return f.release(plugin, a.ContainerID+"/"+a.IfName)
}

func (f fakeIPAM) release(plugin, who string) error {
	h := f.h
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.failing("Release"); err != nil {
		return err
	}
	var freed []string
	for a, w := range h.leases {
		if w == who {
			freed = append(freed, a)
			delete(h.leases, a)
		}
	}
	sort.Strings(freed)
	h.ipam.log("%s: release %s %v", plugin, who, freed)
	return nil
}

func (f fakeIPAM) ReleaseFor(ctx context.Context, plugin string, netconf []byte, path, containerID, ifName string) error {
	return f.release(plugin, containerID+"/"+ifName)
}

func (f fakeIPAM) Check(ctx context.Context, plugin string, netconf []byte, a ipam.Attachment) error {
	f.h.mu.Lock()
	defer f.h.mu.Unlock()
	for _, w := range f.h.leases {
		if w == a.ContainerID+"/"+a.IfName {
			return nil
		}
	}
	return fmt.Errorf("no address leased to container %s interface %s", a.ContainerID, a.IfName)
}

func (f fakeIPAM) Status(ctx context.Context, plugin string, netconf []byte, path string) error {
	return nil
}

func (f fakeIPAM) GC(ctx context.Context, plugin string, netconf []byte, path string) error {
	f.h.ipam.log("%s: gc", plugin)
	return nil
}
