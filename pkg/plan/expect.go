package plan

import (
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/link"
)

// ExpectedContainer is what a CHECK expects of the container interface
// ifName from the ADD's result: its MAC (when the result names one), its
// addresses and its routes. Up is left for the caller.
func ExpectedContainer(prev *current.Result, ifName string) (link.ContainerSpec, error) {
	spec := link.ContainerSpec{IfName: ifName}
	for _, iface := range prev.Interfaces {
		if iface.Sandbox != "" && iface.Name == ifName && iface.Mac != "" {
			mac, err := config.ParseMAC("prevResult.interfaces.mac", iface.Mac)
			if err != nil {
				return spec, err
			}
			spec.MAC = mac
		}
	}
	spec.Addrs = ResultPrefixes(prev)
	for _, r := range prev.Routes {
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		if !ok {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		route := link.Route{Dst: netip.PrefixFrom(dst.Unmap(), ones)}
		if gw, ok := netip.AddrFromSlice(r.GW); ok {
			route.GW = gw.Unmap()
		}
		spec.Routes = append(spec.Routes, route)
	}
	return spec, nil
}
