package link

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// A bridge with isGateway and vlan holds its gateway addresses not on the
// bridge itself (whose own port is outside every VLAN once VLAN filtering
// is on) but on a veth in the host namespace, "<bridge>.<vlan>" as upstream
// names it, whose peer is a port of the bridge in that VLAN (pvid,
// untagged). The peer is berth's: "bvg" plus 10 hex digits of
// SHA-256(bridge \0 vlan), tagged with the alias "berth:vlangw/<bridge>/<vlan>".
const (
	VlanGatewayPortPrefix = "bvg"
	vlanGatewayAlias      = owner.AliasPrefix + "vlangw/"
)

// VlanGatewayName is the gateway interface of vlan on bridge: "<bridge>.<vlan>".
func VlanGatewayName(bridge string, vlan int) string {
	return bridge + "." + strconv.Itoa(vlan)
}

// VlanGatewayPortName is the bridge port of that gateway interface.
func VlanGatewayPortName(bridge string, vlan int) string {
	sum := sha256.Sum256([]byte(bridge + "\x00" + strconv.Itoa(vlan)))
	return VlanGatewayPortPrefix + hex.EncodeToString(sum[:])[:10]
}

// IsVlanGatewayPort reports whether alias is that of a VLAN gateway's
// bridge port: the bridge may go once only such ports are left on it.
func IsVlanGatewayPort(alias string) bool { return strings.HasPrefix(alias, vlanGatewayAlias) }

// EnsureVlanGateway returns bridge br's gateway interface of vlan, making
// it when missing: the pair "<bridge>.<vlan>" – bvg… with the bvg end a
// port of br in vlan (pvid, untagged; VLAN 1 dropped unless preserveVID),
// both ends up, MTU the bridge's. A link of that name that is not a veth
// is code 103.
//
// Equivalent: ip link add $bvg type veth peer name $br.$vlan; ip link set $bvg master $br alias … up;
// bridge vlan add dev $bvg vid $vlan pvid untagged master; ip link set $br.$vlan up
func EnsureVlanGateway(host *netns.NS, br *netlink.Bridge, vlan int, preserveVID bool) (netlink.Link, error) {
	h := host.Netlink()
	name := VlanGatewayName(br.Name, vlan)
	if l, err := h.LinkByName(name); err == nil {
		if l.Type() != "veth" {
			return nil, cnierr.WithCode(cnierr.CodeHostState, fmt.Errorf("vlan gateway %q exists and is a %s, not a veth", name, l.Type()))
		}
		return l, nil
	} else if !IsNotFound(err) {
		return nil, fmt.Errorf("look up vlan gateway %q: %w", name, err)
	}
	port := VlanGatewayPortName(br.Name, vlan)
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = port, br.MTU
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: name, PeerMTU: uint32(br.MTU)}); err != nil {
		return nil, fmt.Errorf("create vlan gateway %s <-> %s: %w", name, port, err)
	}
	l, err := setupVlanGateway(h, br, vlan, preserveVID, port, name)
	if err != nil {
		return nil, errors.Join(err, DeleteHostVeth(host, port))
	}
	return l, nil
}

func setupVlanGateway(h *netlink.Handle, br *netlink.Bridge, vlan int, preserveVID bool, port, name string) (netlink.Link, error) {
	p, err := h.LinkByName(port)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", port, err)
	}
	if err := h.LinkSetAlias(p, vlanGatewayAlias+br.Name+"/"+strconv.Itoa(vlan)); err != nil {
		return nil, fmt.Errorf("tag %s: %w", port, err)
	}
	if err := h.LinkSetMasterByIndex(p, br.Index); err != nil {
		return nil, fmt.Errorf("attach %s to bridge %q: %w", port, br.Name, err)
	}
	if err := setPortVlans(h, p, VethSpec{Vlan: vlan, PreserveVID: preserveVID}); err != nil {
		return nil, err
	}
	gw, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", name, err)
	}
	for _, l := range []netlink.Link{p, gw} {
		if err := h.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", l.Attrs().Name, err)
		}
	}
	return gw, nil
}

// deleteVlanGateways deletes the VLAN gateway ports among links (and so
// their "<bridge>.<vlan>" peers).
func deleteVlanGateways(h *netlink.Handle, ports []netlink.Link) error {
	var errs []error
	for _, p := range ports {
		if err := h.LinkDel(p); err != nil && !IsNotFound(err) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("delete vlan gateway port %s: %w", p.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}
