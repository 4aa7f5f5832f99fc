package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/netns"
)

// BridgeSpec is the bridge a network wants.
type BridgeSpec struct {
	Name          string
	MTU           int // 0: kernel default
	Promisc       bool
	VlanFiltering bool
}

// EnsureBridge creates the bridge if missing and brings it up; an existing
// bridge is reused (its MTU is left alone). A link of that name that is not
// a bridge is an error. Filtering is set at creation, in the same request,
// so a kernel without it refuses before anything exists.
//
// Equivalent: ip -n $host link add $name type bridge [vlan_filtering 1]; ip -n $host link set $name up
func EnsureBridge(host *netns.NS, spec BridgeSpec) (br *netlink.Bridge, created bool, err error) {
	h := host.Netlink()
	br, err = bridgeByName(h, spec.Name)
	if err != nil && !IsNotFound(err) {
		return nil, false, err
	}
	if br == nil {
		created = true
		attrs := netlink.NewLinkAttrs()
		attrs.Name = spec.Name
		attrs.MTU = spec.MTU
		nb := &netlink.Bridge{LinkAttrs: attrs}
		if spec.VlanFiltering {
			on := true
			nb.VlanFiltering = &on
		}
		if err := h.LinkAdd(nb); err != nil && !errors.Is(err, unix.EEXIST) {
			if spec.VlanFiltering && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
				return nil, false, cnierr.KernelFeature("bridge VLAN filtering (needed by vlan/vlanTrunk)", err)
			}
			return nil, false, fmt.Errorf("create bridge %q: %w", spec.Name, err)
		}
		if br, err = bridgeByName(h, spec.Name); err != nil {
			return nil, false, err
		}
		// Pin the bridge MAC to its own random address: otherwise the
		// kernel gives it the lowest MAC of its ports, and it changes as
		// containers come and go (neighbours then hold a stale entry).
		if err := h.LinkSetHardwareAddr(br, br.HardwareAddr); err != nil {
			return nil, false, fmt.Errorf("pin mac of bridge %q: %w", spec.Name, err)
		}
		// A bridge with a gateway address must not autoconfigure from RAs.
		_ = host.WriteSysctl("ipv6/conf/"+spec.Name+"/accept_ra", "0")
	} else if spec.VlanFiltering && (br.VlanFiltering == nil || !*br.VlanFiltering) {
		if err := h.BridgeSetVlanFiltering(br, true); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				return nil, false, cnierr.KernelFeature("bridge VLAN filtering (needed by vlan/vlanTrunk)", err)
			}
			return nil, false, fmt.Errorf("enable vlan filtering on bridge %q: %w", spec.Name, err)
		}
	}
	if spec.Promisc && br.Promisc == 0 {
		if err := h.SetPromiscOn(br); err != nil {
			return nil, false, fmt.Errorf("set bridge %q promiscuous: %w", spec.Name, err)
		}
	}
	if br.OperState != netlink.OperUp && br.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(br); err != nil {
			return nil, false, fmt.Errorf("set bridge %q up: %w", spec.Name, err)
		}
	}
	return br, created, nil
}

func bridgeByName(h *netlink.Handle, name string) (*netlink.Bridge, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up bridge %q: %w", name, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, cnierr.WithCode(cnierr.CodeHostState, fmt.Errorf("link %q exists but is a %s, not a bridge", name, l.Type()))
	}
	return br, nil
}

// EnsureGatewayAddr gives the bridge the gateway address gw (address with
// the subnet's length). An IPv4 address already on the bridge that differs,
// or an IPv6 one in an overlapping subnet, is an error — unless force, when
// it is replaced (upstream's forceAddress).
//
// Equivalent: ip -n $host addr add $gw dev $bridge
func EnsureGatewayAddr(host *netns.NS, br netlink.Link, gw netip.Prefix, force bool) error {
	h := host.Netlink()
	family := netlink.FAMILY_V4
	if gw.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := h.AddrList(br, family)
	if err != nil {
		return fmt.Errorf("list addresses of %q: %w", br.Attrs().Name, err)
	}
	for _, a := range addrs {
		have, ok := cidr.Prefix(a.IPNet)
		if !ok || have.Addr().IsLinkLocalUnicast() {
			continue
		}
		if have == gw {
			return nil
		}
		if family == netlink.FAMILY_V4 || have.Overlaps(gw) {
			if !force {
				return cnierr.WithCode(cnierr.CodeHostState, fmt.Errorf("bridge %q already has address %s, not gateway %s (set forceAddress to replace it)", br.Attrs().Name, have, gw))
			}
			if err := h.AddrDel(br, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove address %s from %q: %w", have, br.Attrs().Name, err)
			}
		}
	}
	addr := &netlink.Addr{IPNet: cidr.IPNet(gw)}
	if family == netlink.FAMILY_V6 {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := h.AddrAdd(br, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add gateway %s to %q: %w", gw, br.Attrs().Name, err)
	}
	return nil
}

// EnableForwarding turns on IP forwarding for the family of a in host.
//
// Equivalent: ip netns exec $host sysctl -w net.ipv4.ip_forward=1 (net.ipv6.conf.all.forwarding=1)
func EnableForwarding(host *netns.NS, a netip.Addr) error {
	key := "ipv4/ip_forward"
	if a.Is6() {
		key = "ipv6/conf/all/forwarding"
	}
	return host.EnsureSysctl(key, "1")
}

func writeSysctl(path, value string) error {
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// IsNotFound reports whether err means the link does not exist.
func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// DeleteBridgeIfUnused deletes the bridge if no link is attached to it
// but its own VLAN gateways (deleted with it); a missing bridge is not an
// error. The caller holds the bridge's lock.
//
// Equivalent: [ -z "$(ip -n $host link show master $name)" ] && ip -n $host link del $name
func DeleteBridgeIfUnused(host *netns.NS, name string) error {
	h := host.Netlink()
	br, err := bridgeByName(h, name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return err
	}
	links, err := netns.RetryDump(h.LinkList)
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var gateways []netlink.Link // VLAN gateway ports: the bridge's own
	for _, l := range links {
		if l.Attrs().MasterIndex != br.Index {
			continue
		}
		if !IsVlanGatewayPort(l.Attrs().Alias) {
			return nil
		}
		gateways = append(gateways, l)
	}
	if err := deleteVlanGateways(h, gateways); err != nil {
		return err
	}
	if err := h.LinkDel(br); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete bridge %q: %w", name, err)
	}
	return nil
}

// CheckHostVeth verifies that the host veth exists, is up and is attached
// to the named bridge.
func CheckHostVeth(host *netns.NS, name, bridge string) error {
	h := host.Netlink()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host veth %s not found: %w", name, err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", name)
	}
	br, err := bridgeByName(h, bridge)
	if err != nil {
		return fmt.Errorf("bridge %q: %w", bridge, err)
	}
	if l.Attrs().MasterIndex != br.Index {
		return fmt.Errorf("host veth %s is not attached to bridge %q", name, bridge)
	}
	return nil
}
