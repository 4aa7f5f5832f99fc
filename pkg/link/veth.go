package link

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// VethSpec is one container's veth pair on a bridge.
type VethSpec struct {
	Owner       Owner
	Bridge      *netlink.Bridge
	ContainerNS int              // fd of the container's network namespace
	MTU         int              // 0: the bridge's
	MAC         net.HardwareAddr // container side; nil: kernel-chosen
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
// host link), attaches the host end to the bridge, tags it with the owner's
// alias and brings it up. The container end stays down. On error nothing
// is left.
//
// Equivalent: ip link add $host type veth peer name $ifname netns $ns;
// ip link set $host master $bridge alias … up
func AddVeth(spec VethSpec) (v Veth, err error) {
	mtu := spec.MTU
	if mtu == 0 {
		mtu = spec.Bridge.MTU
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = HostVethName(spec.Owner)
	attrs.MTU = mtu
	veth := &netlink.Veth{
		LinkAttrs:        attrs,
		PeerName:         spec.Owner.IfName,
		PeerHardwareAddr: spec.MAC,
		PeerNamespace:    netlink.NsFd(spec.ContainerNS),
		PeerMTU:          uint32(mtu),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		if errors.Is(err, unix.EEXIST) {
			// The host name is unique per attachment, so the clash is the
			// container's name (or a half-done earlier ADD: DEL clears it).
			return v, cnierr.Env("CNI_IFNAME", spec.Owner.IfName, err, "an interface of that name already exists in the container (or a previous ADD of this attachment was not deleted)")
		}
		return v, fmt.Errorf("create veth %s <-> %s: %w", attrs.Name, spec.Owner.IfName, err)
	}
	defer func() {
		if err != nil {
			_ = DeleteHostVeth(attrs.Name)
		}
	}()
	host, err := netlink.LinkByName(attrs.Name)
	if err != nil {
		return v, fmt.Errorf("look up new veth %s: %w", attrs.Name, err)
	}
	if alias := Alias(spec.Owner); alias != "" {
		if err := netlink.LinkSetAlias(host, alias); err != nil {
			return v, fmt.Errorf("tag veth %s: %w", attrs.Name, err)
		}
	}
	if err := netlink.LinkSetMasterByIndex(host, spec.Bridge.Index); err != nil {
		return v, fmt.Errorf("attach %s to bridge %q: %w", attrs.Name, spec.Bridge.Name, err)
	}
	if spec.Hairpin {
		if err := netlink.LinkSetHairpin(host, true); err != nil {
			return v, fmt.Errorf("set hairpin on %s: %w", attrs.Name, err)
		}
	}
	if spec.Isolated {
		if err := netlink.LinkSetIsolated(host, true); err != nil {
			return v, fmt.Errorf("set port isolation on %s: %w", attrs.Name, err)
		}
	}
	if err := setPortVlans(host, spec); err != nil {
		return v, err
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return v, fmt.Errorf("set %s up: %w", attrs.Name, err)
	}
	v.HostName = attrs.Name
	v.HostMAC = host.Attrs().HardwareAddr
	peer, err := peerMAC(spec.ContainerNS, spec.Owner.IfName)
	if err != nil {
		return v, err
	}
	v.ContainerMAC = peer
	return v, nil
}

func peerMAC(nsFd int, ifName string) (net.HardwareAddr, error) {
	h, err := netlink.NewHandleAt(nsHandle(nsFd))
	if err != nil {
		return nil, fmt.Errorf("netlink in container namespace: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(ifName)
	if err != nil {
		return nil, fmt.Errorf("look up %s in container: %w", ifName, err)
	}
	return l.Attrs().HardwareAddr, nil
}

// setPortVlans configures the port's VLANs as upstream does: the access
// VLAN as pvid untagged, trunk VLANs tagged, VLAN 1 removed unless kept.
//
// Equivalent: bridge vlan add dev $host vid $vlan pvid untagged master
func setPortVlans(host netlink.Link, spec VethSpec) error {
	if spec.Vlan == 0 && len(spec.Trunk) == 0 {
		return nil
	}
	if !spec.PreserveVID {
		if err := netlink.BridgeVlanDel(host, 1, true, true, false, true); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove default vlan from %s: %w", host.Attrs().Name, err)
		}
	}
	if spec.Vlan != 0 {
		if err := netlink.BridgeVlanAdd(host, uint16(spec.Vlan), true, true, false, true); err != nil {
			return fmt.Errorf("set vlan %d on %s: %w", spec.Vlan, host.Attrs().Name, err)
		}
	}
	for _, vid := range spec.Trunk {
		if err := netlink.BridgeVlanAdd(host, uint16(vid), false, false, false, true); err != nil {
			return fmt.Errorf("add trunk vlan %d on %s: %w", vid, host.Attrs().Name, err)
		}
	}
	if spec.Vlan == 0 && !spec.PreserveVID {
		if err := netlink.BridgeVlanAdd(host, 1, true, true, false, true); err != nil {
			return fmt.Errorf("set native vlan 1 on %s: %w", host.Attrs().Name, err)
		}
	}
	return nil
}

// DeleteHostVeth deletes a host veth (and so its peer); a missing link is
// not an error.
//
// Equivalent: ip link del $name
func DeleteHostVeth(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if err := netlink.LinkDel(l); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

// HostVeth is a berth host veth as found in the kernel.
type HostVeth struct {
	Name   string
	Owner  Owner
	Master int // ifindex of the bridge it is attached to, 0 if none
	Up     bool
}

// ListHostVeths returns the berth host veths whose alias names network
// (every network when network is empty).
//
// Equivalent: ip -d link show type veth | grep 'alias berth:'
func ListHostVeths(network string) ([]HostVeth, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	var out []HostVeth
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" {
			continue
		}
		o, ok := ParseAlias(a.Alias)
		if !ok || network != "" && o.Network != network {
			continue
		}
		out = append(out, HostVeth{Name: a.Name, Owner: o, Master: a.MasterIndex, Up: a.Flags&net.FlagUp != 0})
	}
	return out, nil
}

func netlinkHandleIn(n ns.NetNS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(nsHandle(int(n.Fd())))
	if err != nil {
		return nil, fmt.Errorf("netlink in namespace %s: %w", n.Path(), err)
	}
	return h, nil
}

// HostLinkExists reports whether a link called name exists in the calling
// thread's (the host's) namespace.
//
// Equivalent: ip link show $name
func HostLinkExists(name string) (bool, error) {
	_, err := netlink.LinkByName(name)
	if err == nil {
		return true, nil
	}
	if IsNotFound(err) {
		return false, nil
	}
	return false, fmt.Errorf("look up link %s: %w", name, err)
}
