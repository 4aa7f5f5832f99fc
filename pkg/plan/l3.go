// Package plan turns an IPAM result and a network's gateway options into
// what the container and the host need: addresses, routes, gateway
// addresses, masquerade sources. It is pure, shared by every mode that
// puts containers behind a gateway (bridge, overlay).
package plan

import (
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/cidr"
)

// Gateway options, as upstream bridge names them.
type Gateway struct {
	IsGW        bool // the host side holds each subnet's gateway address
	IsDefaultGW bool // the container gets a default route via it
}

// Route is a route inside the container. A zero GW means on-link.
type Route struct {
	Dst netip.Prefix
	GW  netip.Addr
}

// Container is what the container's interface should be: its addresses
// and routes after IPAM (and, for CHECK, the MAC the result named).
type Container struct {
	IfName string
	MAC    net.HardwareAddr // expected MAC (CHECK); nil: any
	Addrs  []netip.Prefix
	Routes []Route
	DAD    bool // run IPv6 duplicate address detection (upstream enabledad)
	Up     bool // bring the interface up even with no address
}

// L3 is the plan for one container interface.
type L3 struct {
	Addrs    []netip.Prefix // container addresses with their subnet length
	Routes   []Route        // container routes
	Gateways []netip.Prefix // addresses the host side (bridge) must hold
}

// PlanL3 completes res in place (gateways derived where IPAM gave none and
// IsGW is set, every IP tied to interface index ifIndex, a default route
// per family when IsDefaultGW) and returns the plan.
func PlanL3(res *current.Result, gw Gateway, ifIndex int) (L3, error) {
	var p L3
	if len(res.IPs) == 0 {
		return p, fmt.Errorf("IPAM returned no IP address")
	}
	defaultDone := map[bool]bool{} // keyed by is-IPv6
	for _, r := range res.Routes {
		if r.GW != nil && cidr.IsDefault(&r.Dst) {
			defaultDone[r.Dst.IP.To4() == nil] = true
		}
	}
	seenGW := map[netip.Prefix]bool{}
	for _, ipc := range res.IPs {
		addr, ok := toPrefix(ipc.Address)
		if !ok {
			return p, fmt.Errorf("IPAM returned a bad address %v", ipc.Address)
		}
		ipc.Interface = current.Int(ifIndex)
		p.Addrs = append(p.Addrs, addr)
		if ipc.Gateway == nil && gw.IsGW {
			ipc.Gateway = firstHost(addr).AsSlice()
		}
		gwAddr, _ := cidr.Addr(ipc.Gateway)
		if gw.IsGW && gwAddr.IsValid() {
			if gwAddr == addr.Addr() {
				return p, fmt.Errorf("IPAM gave the container its own gateway address %s", gwAddr)
			}
			g := netip.PrefixFrom(gwAddr, addr.Bits())
			if !seenGW[g] {
				seenGW[g] = true
				p.Gateways = append(p.Gateways, g)
			}
		}
		v6 := addr.Addr().Is6()
		if gw.IsDefaultGW && !defaultDone[v6] && gwAddr.IsValid() {
			dst := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
			if v6 {
				dst = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
			}
			res.Routes = append(res.Routes, &types.Route{Dst: *cidr.IPNet(dst), GW: gwAddr.AsSlice()})
			defaultDone[v6] = true
		}
	}
	for _, r := range res.Routes {
		dst, ok := toPrefix(r.Dst)
		if !ok {
			return p, fmt.Errorf("IPAM returned a bad route %v", r.Dst)
		}
		route := Route{Dst: dst.Masked()}
		if r.GW != nil {
			route.GW, _ = cidr.Addr(r.GW)
		} else {
			route.GW = gatewayFor(res, dst.Addr().Is6())
		}
		p.Routes = append(p.Routes, route)
	}
	return p, nil
}

// gatewayFor is the first gateway of the family, the next hop of IPAM
// routes that name none (upstream's behaviour).
func gatewayFor(res *current.Result, v6 bool) netip.Addr {
	for _, ipc := range res.IPs {
		if (ipc.Address.IP.To4() == nil) == v6 && ipc.Gateway != nil {
			a, _ := cidr.Addr(ipc.Gateway)
			return a
		}
	}
	return netip.Addr{}
}

func firstHost(p netip.Prefix) netip.Addr {
	return p.Masked().Addr().Next()
}

func toPrefix(n net.IPNet) (netip.Prefix, bool) { return cidr.Prefix(&n) }

// ResultPrefixes returns the result's addresses as prefixes (address with
// subnet length), skipping malformed ones.
func ResultPrefixes(res *current.Result) []netip.Prefix {
	var out []netip.Prefix
	for _, ipc := range res.IPs {
		if p, ok := toPrefix(ipc.Address); ok {
			out = append(out, p)
		}
	}
	return out
}
