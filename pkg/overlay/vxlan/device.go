package vxlan

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/netns"
)

// DevicePrefix starts the name of every VXLAN device berth creates.
// Device names are an API once released: never change the scheme.
const DevicePrefix = "bvx"

// DefaultPort is the IANA VXLAN port. The kernel's own default, when none
// is given, is Linux's pre-IANA 8472: EnsureDevice always sets one.
const DefaultPort = 4789

// Overhead is what VXLAN over IPv4 adds to every frame: outer IPv4 (20),
// UDP (8), VXLAN (8) and inner Ethernet (14) headers.
const Overhead = 50

// DeviceName is the VXLAN device of network: "bvx" plus 10 hex digits of
// SHA-256(network), 13 bytes, under the kernel's 15. One device per
// network on every host, so the same name everywhere.
func DeviceName(network string) string {
	sum := sha256.Sum256([]byte(network))
	return DevicePrefix + hex.EncodeToString(sum[:])[:10]
}

// AliasFor is the alias of a network's device: "berth:overlay/<network>".
func AliasFor(network string) string { return "berth:overlay/" + network }

// DeviceSpec is the VXLAN device one host wants for a network.
type DeviceSpec struct {
	Name     string     // DeviceName(network)
	VNI      uint32     // 1..16777215
	Port     uint16     // UDP destination port; 0 means DefaultPort
	Local    netip.Addr // this host's VTEP (IPv4), the source of the outer packets
	Underlay int        // ifindex of the underlay interface (the `dev` of the vxlan)
	MTU      int        // 0 leaves the kernel's choice (the underlay's minus 50 at creation)
	// Alias tags the device (IFLA_IFALIAS) so people and tools can tell
	// whose it is, e.g. AliasFor(network); "" leaves the alias alone.
	Alias string
	// Subnet is this host's lease. The device holds its network address
	// as a /32 (10.244.3.0/24 → 10.244.3.0/32), flannel's scheme: the
	// remote hosts' routes use that address as next hop, and no connected
	// route for the subnet lands on the device (it belongs to the bridge).
	// The zero Subnet leaves the device's addresses alone: the agent needs
	// the device (its MAC) before it holds a lease.
	Subnet netip.Prefix
}

func (s DeviceSpec) port() uint16 {
	if s.Port == 0 {
		return DefaultPort
	}
	return s.Port
}

// Addr is the address the device holds for s.Subnet, as a /32.
func (s DeviceSpec) Addr() netip.Prefix {
	return netip.PrefixFrom(s.Subnet.Masked().Addr(), 32)
}

func (s DeviceSpec) validate() error {
	switch {
	case s.Name == "" || len(s.Name) > 15 || strings.ContainsAny(s.Name, "/ \t\n:"):
		return fmt.Errorf("vxlan device name %q is not a valid interface name", s.Name)
	case s.VNI == 0 || s.VNI > 1<<24-1:
		return fmt.Errorf("vxlan %q: vni %d is outside 1..16777215", s.Name, s.VNI)
	case !s.Local.Is4():
		return fmt.Errorf("vxlan %q: local address %v is not IPv4", s.Name, s.Local)
	case s.Underlay <= 0:
		return fmt.Errorf("vxlan %q: no underlay interface", s.Name)
	case s.MTU < 0:
		return fmt.Errorf("vxlan %q: mtu %d is negative", s.Name, s.MTU)
	case s.Subnet.IsValid() && !s.Subnet.Addr().Is4():
		return fmt.Errorf("vxlan %q: subnet %s is not IPv4", s.Name, s.Subnet)
	}
	return nil
}

// Device is a VXLAN device as EnsureDevice left it.
type Device struct {
	Name   string
	Index  int
	MAC    net.HardwareAddr // what remote hosts put in their neighbour and FDB entries
	MTU    int
	Subnet netip.Prefix // the spec's Subnet: entries inside it are never touched by SyncPeers
	// Created is true when EnsureDevice created the device; Replaced then
	// says why an existing one was deleted first ("" when there was none).
	Created  bool
	Replaced string
}

// incompatible compares an existing link with the spec and says why it
// cannot be kept ("" when it can). Only what needs a new device counts:
// MTU, addresses and the up flag are fixed in place.
func incompatible(l netlink.Link, spec DeviceSpec) string {
	v, ok := l.(*netlink.Vxlan)
	if !ok {
		return fmt.Sprintf("it is a %s, not a vxlan", l.Type())
	}
	var diffs []string
	if v.VxlanId != int(spec.VNI) {
		diffs = append(diffs, fmt.Sprintf("vni %d, want %d", v.VxlanId, spec.VNI))
	}
	if v.Port != int(spec.port()) {
		diffs = append(diffs, fmt.Sprintf("dstport %d, want %d", v.Port, spec.port()))
	}
	if have, _ := cidr.Addr(v.SrcAddr); have != spec.Local {
		diffs = append(diffs, fmt.Sprintf("local %v, want %s", v.SrcAddr, spec.Local))
	}
	if v.VtepDevIndex != spec.Underlay {
		diffs = append(diffs, fmt.Sprintf("dev index %d, want %d", v.VtepDevIndex, spec.Underlay))
	}
	if v.Learning {
		diffs = append(diffs, "learning on")
	}
	if v.FlowBased {
		diffs = append(diffs, "external (flow based)")
	}
	if len(v.Group) > 0 && !v.Group.IsUnspecified() {
		diffs = append(diffs, fmt.Sprintf("group %s", v.Group))
	}
	return strings.Join(diffs, ", ")
}

// EnsureDevice makes the device match spec, flannel's way: an existing
// device with the same VNI, port, local address, underlay and learning off
// is kept (its MAC, and so every remote host's entries, stay valid); one
// that differs is deleted and created again. Then the MTU is set, the
// device holds exactly spec.Addr() as IPv4 address (others are removed),
// and it is up.
//
// Equivalent: ip link add $name type vxlan id $vni dstport $port local $vtep dev $underlay nolearning;
// ip link set $name mtu $mtu alias $alias; ip addr add $subnet.0/32 dev $name; ip link set $name up
func EnsureDevice(n *netns.NS, spec DeviceSpec) (Device, error) {
	h := n.Netlink()
	if err := spec.validate(); err != nil {
		return Device{}, err
	}
	dev := Device{Name: spec.Name, Subnet: spec.Subnet}
	l, err := h.LinkByName(spec.Name)
	switch {
	case err != nil && !isNotFound(err):
		return Device{}, fmt.Errorf("look up vxlan %q in %s: %w", spec.Name, n, err)
	case err == nil:
		if why := incompatible(l, spec); why != "" {
			if derr := h.LinkDel(l); derr != nil && !isNotFound(derr) {
				return Device{}, fmt.Errorf("delete incompatible vxlan %q (%s): %w", spec.Name, why, derr)
			}
			dev.Replaced = why
			l = nil
		}
	default:
		l = nil
	}
	if l == nil {
		if l, err = createDevice(n, spec); err != nil {
			return Device{}, err
		}
		dev.Created = true
	}
	a := l.Attrs()
	if spec.MTU > 0 && a.MTU != spec.MTU {
		if err := h.LinkSetMTU(l, spec.MTU); err != nil {
			return Device{}, fmt.Errorf("set mtu %d on vxlan %q: %w", spec.MTU, spec.Name, err)
		}
		a.MTU = spec.MTU
	}
	if spec.Alias != "" && a.Alias != spec.Alias {
		if err := h.LinkSetAlias(l, spec.Alias); err != nil {
			return Device{}, fmt.Errorf("set alias %q on vxlan %q: %w", spec.Alias, spec.Name, err)
		}
	}
	if spec.Subnet.IsValid() {
		if err := ensureOnlyAddr(n, l, spec.Addr()); err != nil {
			return Device{}, err
		}
	}
	if a.Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(l); err != nil {
			return Device{}, fmt.Errorf("set vxlan %q up: %w", spec.Name, err)
		}
	}
	dev.Index, dev.MAC, dev.MTU = a.Index, a.HardwareAddr, a.MTU
	return dev, nil
}

func createDevice(n *netns.NS, spec DeviceSpec) (netlink.Link, error) {
	h := n.Netlink()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = spec.Name
	attrs.MTU = spec.MTU
	attrs.Alias = spec.Alias
	v := &netlink.Vxlan{
		LinkAttrs:    attrs,
		VxlanId:      int(spec.VNI),
		VtepDevIndex: spec.Underlay,
		SrcAddr:      spec.Local.AsSlice(),
		Port:         int(spec.port()),
		Learning:     false,
	}
	if err := h.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("create vxlan %q (vni %d, dstport %d, local %s) in %s: %w", spec.Name, spec.VNI, spec.port(), spec.Local, n, err)
	}
	// Read it back: the kernel chose the MAC (and the MTU when none was given).
	l, err := h.LinkByName(spec.Name)
	if err != nil {
		return nil, fmt.Errorf("look up new vxlan %q: %w", spec.Name, err)
	}
	return l, nil
}

// ensureOnlyAddr leaves want as the link's only IPv4 address.
//
// Equivalent: ip addr add $want dev $link; ip addr del $other dev $link
func ensureOnlyAddr(n *netns.NS, l netlink.Link, want netip.Prefix) error {
	h := n.Netlink()
	name := l.Attrs().Name
	addrs, err := netns.RetryDump(func() ([]netlink.Addr, error) { return h.AddrList(l, netlink.FAMILY_V4) })
	if err != nil {
		return fmt.Errorf("list addresses of vxlan %q: %w", name, err)
	}
	found := false
	for _, a := range addrs {
		if have, ok := cidr.Prefix(a.IPNet); ok && have == want {
			found = true
			continue
		}
		if err := h.AddrDel(l, &a); err != nil && !isNotFound(err) {
			return fmt.Errorf("remove address %s from vxlan %q: %w", a.IPNet, name, err)
		}
	}
	if found {
		return nil
	}
	if err := h.AddrAdd(l, &netlink.Addr{IPNet: cidr.IPNet(want)}); err != nil {
		return fmt.Errorf("add address %s to vxlan %q: %w", want, name, err)
	}
	return nil
}

// DeleteDevice removes the device name; a missing device is not an error.
// The kernel drops its routes, neighbours and FDB entries with it.
//
// Equivalent: ip link del $name
func DeleteDevice(n *netns.NS, name string) error {
	h := n.Netlink()
	l, err := h.LinkByName(name)
	if isNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("look up vxlan %q in %s: %w", name, n, err)
	}
	if _, ok := l.(*netlink.Vxlan); !ok {
		return fmt.Errorf("delete vxlan %q in %s: it is a %s, not a vxlan", name, n, l.Type())
	}
	if err := h.LinkDel(l); err != nil && !isNotFound(err) {
		return fmt.Errorf("delete vxlan %q in %s: %w", name, n, err)
	}
	return nil
}
