// Command bridge is berth's bridge CNI plugin: containers on a per-network
// Linux bridge, addresses from IPAM, the host as gateway, masquerade out.
// Its commands live in pkg/bridgecmd, shared with the overlay plugin.
package main

import (
	"github.com/berth-cni/berth/pkg/bridgecmd"
	"github.com/berth-cni/berth/pkg/pluginmain"
)

func main() {
	p := bridgecmd.Bridge
	pluginmain.Run("bridge", pluginmain.Funcs{Add: p.Add, Del: p.Del, Check: p.Check, GC: p.GC, Status: p.Status})
}
