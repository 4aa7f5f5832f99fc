package link

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cnierr"
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
// Equivalent: ip link add $name type bridge [vlan_filtering 1]; ip link set $name up
func EnsureBridge(spec BridgeSpec) (br *netlink.Bridge, created bool, err error) {
	br, err = bridgeByName(spec.Name)
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
		if err := netlink.LinkAdd(nb); err != nil && !errors.Is(err, unix.EEXIST) {
			if spec.VlanFiltering && (errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL)) {
				return nil, false, cnierr.KernelFeature("bridge VLAN filtering (needed by vlan/vlanTrunk)", err)
			}
			return nil, false, fmt.Errorf("create bridge %q: %w", spec.Name, err)
		}
		if br, err = bridgeByName(spec.Name); err != nil {
			return nil, false, err
		}
		// Pin the bridge MAC to its own random address: otherwise the
		// kernel gives it the lowest MAC of its ports, and it changes as
		// containers come and go (neighbours then hold a stale entry).
		if err := netlink.LinkSetHardwareAddr(br, br.HardwareAddr); err != nil {
			return nil, false, fmt.Errorf("pin mac of bridge %q: %w", spec.Name, err)
		}
		// A bridge with a gateway address must not autoconfigure from RAs.
		_ = writeSysctl(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/accept_ra", spec.Name), "0")
	} else if spec.VlanFiltering && (br.VlanFiltering == nil || !*br.VlanFiltering) {
		if err := netlink.BridgeSetVlanFiltering(br, true); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EINVAL) {
				return nil, false, cnierr.KernelFeature("bridge VLAN filtering (needed by vlan/vlanTrunk)", err)
			}
			return nil, false, fmt.Errorf("enable vlan filtering on bridge %q: %w", spec.Name, err)
		}
	}
	if spec.Promisc && br.Promisc == 0 {
		if err := netlink.SetPromiscOn(br); err != nil {
			return nil, false, fmt.Errorf("set bridge %q promiscuous: %w", spec.Name, err)
		}
	}
	if br.OperState != netlink.OperUp && br.Flags&net.FlagUp == 0 {
		if err := netlink.LinkSetUp(br); err != nil {
			return nil, false, fmt.Errorf("set bridge %q up: %w", spec.Name, err)
		}
	}
	return br, created, nil
}

func bridgeByName(name string) (*netlink.Bridge, error) {
	l, err := netlink.LinkByName(name)
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
// Equivalent: ip addr add $gw dev $bridge
func EnsureGatewayAddr(br netlink.Link, gw netip.Prefix, force bool) error {
	family := netlink.FAMILY_V4
	if gw.Addr().Is6() {
		family = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(br, family)
	if err != nil {
		return fmt.Errorf("list addresses of %q: %w", br.Attrs().Name, err)
	}
	for _, a := range addrs {
		have, ok := PrefixOf(a.IPNet)
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
			if err := netlink.AddrDel(br, &a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				return fmt.Errorf("remove address %s from %q: %w", have, br.Attrs().Name, err)
			}
		}
	}
	addr := &netlink.Addr{IPNet: IPNet(gw)}
	if family == netlink.FAMILY_V6 {
		addr.Flags = unix.IFA_F_NODAD
	}
	if err := netlink.AddrAdd(br, addr); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add gateway %s to %q: %w", gw, br.Attrs().Name, err)
	}
	return nil
}

// EnableForwarding turns on IP forwarding for the family of a, in the
// calling thread's network namespace.
//
// Equivalent: sysctl -w net.ipv4.ip_forward=1 (net.ipv6.conf.all.forwarding=1)
func EnableForwarding(a netip.Addr) error {
	path := "/proc/sys/net/ipv4/ip_forward"
	if a.Is6() {
		path = "/proc/sys/net/ipv6/conf/all/forwarding"
	}
	if b, err := os.ReadFile(path); err == nil && len(b) > 0 && b[0] == '1' {
		return nil
	}
	return writeSysctl(path, "1")
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

// IPNet converts at the netlink edge.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// PrefixOf converts a net.IPNet from netlink (host bits kept, an IPv4
// address unmapped) to a prefix; false for nil or a malformed address.
func PrefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

// DeleteBridgeIfUnused deletes the bridge if no link is attached to it
// but its own VLAN gateways (deleted with it); a missing bridge is not an
// error. The caller holds the bridge's lock.
//
// Equivalent: [ -z "$(ip link show master $name)" ] && ip link del $name
func DeleteBridgeIfUnused(name string) error {
	br, err := bridgeByName(name)
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return err
	}
	links, err := netlink.LinkList()
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
	if err := deleteVlanGateways(gateways); err != nil {
		return err
	}
	if err := netlink.LinkDel(br); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete bridge %q: %w", name, err)
	}
	return nil
}

// CheckHostVeth verifies that the host veth exists, is up and is attached
// to the named bridge.
func CheckHostVeth(name, bridge string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host veth %s not found: %w", name, err)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host veth %s is down", name)
	}
	br, err := bridgeByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %q: %w", bridge, err)
	}
	if l.Attrs().MasterIndex != br.Index {
		return fmt.Errorf("host veth %s is not attached to bridge %q", name, bridge)
	}
	return nil
}
