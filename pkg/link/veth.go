package link

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// VethSpec is one container's veth pair on a bridge.
type VethSpec struct {
	Owner       owner.Owner
	Bridge      *netlink.Bridge
	Container   *netns.NS        // where the container end is born
	MTU         int              // 0: the bridge's
	MAC         net.HardwareAddr // container side; nil: a random one
	Hairpin     bool
	Isolated    bool
	Vlan        int   // access VLAN (pvid, untagged); 0: none
	Trunk       []int // tagged VLANs
	PreserveVID bool  // keep VLAN 1 on the port when vlan/trunk are set
}

// Veth is what AddVeth made.
type Veth struct {
	HostName     string
	HostMAC      net.HardwareAddr
	ContainerMAC net.HardwareAddr
}

// AddVeth creates the pair with its container end born inside the
// container's namespace under its final name (so it never clashes with a
// host link) and the host end already a port of the bridge, down (one
// RTM_NEWLINK); then it brings the host end up and tags it with the
// owner's alias (the kernel ignores IFLA_IFALIAS on creation). Both MACs
// are chosen here, not by the kernel: the result can name them without
// reading them back, and a MAC that was set (addr_assign_type 3) is one
// udev's MACAddressPolicy leaves alone, so it never changes after the
// result reported it. The container end stays down. On error nothing is
// left.
//
// Equivalent: ip -n $host link add $hveth address $hmac mtu $mtu master $bridge
// type veth peer name $ifname address $cmac mtu $mtu netns $container;
// ip -n $host link set $hveth up alias …
func AddVeth(host *netns.NS, spec VethSpec) (v Veth, err error) {
	mtu := spec.MTU
	if mtu == 0 {
		mtu = spec.Bridge.MTU
	}
	v.HostName = spec.Owner.HostVeth()
	v.HostMAC = RandomMAC()
	v.ContainerMAC = spec.MAC
	if v.ContainerMAC == nil {
		v.ContainerMAC = RandomMAC()
	}
	if err = newVeth(host, v, spec.Owner.IfName, mtu, spec.Bridge.Index, spec.Container.Fd()); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// The host name is unique per attachment, so the clash is the
			// container's name (or a half-done earlier ADD: DEL clears it).
			return Veth{}, ifNameTaken(spec.Owner.IfName, err)
		}
		return Veth{}, fmt.Errorf("create veth %s <-> %s on bridge %q: %w", v.HostName, spec.Owner.IfName, spec.Bridge.Name, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, DeleteHostVeth(host, v.HostName))
		}
	}()
	h := host.Netlink()
	hv, err := h.LinkByName(v.HostName)
	if err != nil {
		return v, fmt.Errorf("look up new veth %s: %w", v.HostName, err)
	}
	if spec.Hairpin {
		if err = h.LinkSetHairpin(hv, true); err != nil {
			return v, fmt.Errorf("set hairpin on %s: %w", v.HostName, err)
		}
	}
	if spec.Isolated {
		if err = h.LinkSetIsolated(hv, true); err != nil {
			return v, fmt.Errorf("set port isolation on %s: %w", v.HostName, err)
		}
	}
	if err = setPortVlans(h, hv, spec); err != nil {
		return v, err
	}
	// Up by index, after the lookup: up at creation, or by name, made an
	// ADD slower on a bridge with many ports (bench/README.md).
	if err = h.LinkSetUp(hv); err != nil {
		return v, fmt.Errorf("set %s up: %w", v.HostName, err)
	}
	if alias := spec.Owner.Alias(); alias != "" {
		if err = h.LinkSetAlias(hv, alias); err != nil {
			return v, fmt.Errorf("tag veth %s: %w", v.HostName, err)
		}
	}
	return v, nil
}

// newVeth sends the RTM_NEWLINK of AddVeth: the host end (name, MAC, MTU,
// master) with its peer (name, MAC, MTU, namespace) in
// IFLA_LINKINFO. The kernel applies IFLA_MASTER after it registered both
// ends, and undoes the whole link if that fails.
func newVeth(host *netns.NS, v Veth, peerName string, mtu, master, nsFd int) error {
	req, err := host.Request(unix.NETLINK_ROUTE, unix.RTM_NEWLINK, unix.NLM_F_CREATE|unix.NLM_F_EXCL|unix.NLM_F_ACK)
	if err != nil {
		return err
	}
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(v.HostName)))
	req.AddData(nl.NewRtAttr(unix.IFLA_ADDRESS, v.HostMAC))
	if mtu > 0 {
		req.AddData(nl.NewRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu))))
	}
	req.AddData(nl.NewRtAttr(unix.IFLA_MASTER, nl.Uint32Attr(uint32(master))))
	info := nl.NewRtAttr(unix.IFLA_LINKINFO, nil)
	info.AddRtAttr(nl.IFLA_INFO_KIND, nl.NonZeroTerminated("veth"))
	peer := info.AddRtAttr(nl.IFLA_INFO_DATA, nil).AddRtAttr(nl.VETH_INFO_PEER, nil)
	nl.NewIfInfomsgChild(peer, unix.AF_UNSPEC)
	peer.AddRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(peerName))
	peer.AddRtAttr(unix.IFLA_ADDRESS, v.ContainerMAC)
	if mtu > 0 {
		peer.AddRtAttr(unix.IFLA_MTU, nl.Uint32Attr(uint32(mtu)))
	}
	peer.AddRtAttr(unix.IFLA_NET_NS_FD, nl.Uint32Attr(uint32(nsFd)))
	req.AddData(info)
	_, err = req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// RandomMAC is a random unicast, locally administered MAC, as the kernel's
// eth_random_addr makes them.
func RandomMAC() net.HardwareAddr {
	mac := make(net.HardwareAddr, 6)
	v := rand.Uint64()
	for i := range mac {
		mac[i] = byte(v >> (8 * i))
	}
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// setPortVlans configures the port's VLANs as upstream does: the access
// VLAN as pvid untagged, trunk VLANs tagged, VLAN 1 removed unless kept.
//
// Equivalent: bridge vlan add dev $host vid $vlan pvid untagged master
func setPortVlans(h *netlink.Handle, host netlink.Link, spec VethSpec) error {
	if spec.Vlan == 0 && len(spec.Trunk) == 0 {
		return nil
	}
	if !spec.PreserveVID {
		if err := h.BridgeVlanDel(host, 1, true, true, false, true); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove default vlan from %s: %w", host.Attrs().Name, err)
		}
	}
	if spec.Vlan != 0 {
		if err := h.BridgeVlanAdd(host, uint16(spec.Vlan), true, true, false, true); err != nil {
			return fmt.Errorf("set vlan %d on %s: %w", spec.Vlan, host.Attrs().Name, err)
		}
	}
	for _, vid := range spec.Trunk {
		if err := h.BridgeVlanAdd(host, uint16(vid), false, false, false, true); err != nil {
			return fmt.Errorf("add trunk vlan %d on %s: %w", vid, host.Attrs().Name, err)
		}
	}
	if spec.Vlan == 0 && !spec.PreserveVID {
		if err := h.BridgeVlanAdd(host, 1, true, true, false, true); err != nil {
			return fmt.Errorf("set native vlan 1 on %s: %w", host.Attrs().Name, err)
		}
	}
	return nil
}

// DeleteHostVeth deletes a host veth (and so its peer); a missing link is
// not an error. It is one RTM_DELLINK naming the link, with no lookup
// first: the reply waits for the kernel's teardown of the pair (an RCU
// barrier, a grace period or two: bench/README.md), which a lookup's round
// trip before it only delays.
//
// Equivalent: ip -n $host link del $name
func DeleteHostVeth(host *netns.NS, name string) error {
	if len(name) >= unix.IFNAMSIZ {
		return nil // no link has a name that long
	}
	req, err := host.Request(unix.NETLINK_ROUTE, unix.RTM_DELLINK, unix.NLM_F_ACK)
	if err != nil {
		return err
	}
	req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
	req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// HostVeth is a berth host veth as found in the kernel.
type HostVeth struct {
	Name   string
	Owner  owner.Owner
	Master int // ifindex of the bridge it is attached to, 0 if none
	Up     bool
}

// ListHostVeths returns the berth host veths whose alias names network
// (every network when network is empty).
//
// Equivalent: ip -n $host -d link show type veth | grep 'alias berth:'
func ListHostVeths(host *netns.NS, network string) ([]HostVeth, error) {
	links, err := netns.RetryDump(host.Netlink().LinkList)
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []HostVeth
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" {
			continue
		}
		o, ok := owner.ParseAlias(a.Alias)
		if !ok || network != "" && o.Network != network {
			continue
		}
		out = append(out, HostVeth{Name: a.Name, Owner: o, Master: a.MasterIndex, Up: a.Flags&net.FlagUp != 0})
	}
	return out, nil
}
