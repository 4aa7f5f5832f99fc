package plan

import (
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/config"
)

// ExpectedContainer is what a CHECK expects of the container interface
// ifName from the ADD's result: its MAC (when the result names one), its
// addresses and its routes. Up is left for the caller.
func ExpectedContainer(prev *current.Result, ifName string) (Container, error) {
	spec := Container{IfName: ifName}
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
		dst, ok := cidr.Prefix(&r.Dst)
		if !ok {
			continue
		}
		route := Route{Dst: dst}
		if gw, ok := cidr.Addr(r.GW); ok {
			route.GW = gw
		}
		spec.Routes = append(spec.Routes, route)
	}
	return spec, nil
}
