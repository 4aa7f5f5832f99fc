// Command macvlan is berth's macvlan CNI plugin: each container gets a
// macvlan sub-interface of a host NIC (the master), with its own MAC on the
// physical network, addresses from IPAM, and optionally a host shim through
// which the host reaches it.
package main

import (
	"github.com/berth-cni/berth/pkg/macvlancmd"
	"github.com/berth-cni/berth/pkg/pluginmain"
)

func main() {
	pluginmain.Run("macvlan", pluginmain.Funcs{Add: macvlancmd.Add, Del: macvlancmd.Del, Check: macvlancmd.Check, GC: macvlancmd.GC, Status: macvlancmd.Status})
}
