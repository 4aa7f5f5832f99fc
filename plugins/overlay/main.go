// Command overlay is berth's overlay CNI plugin: containers of one network
// spread over many hosts, joined by VXLAN. The node agent, berth-overlayd,
// leases this host's subnet and programs the peers; this plugin puts each
// container on the host's overlay bridge with an address from that subnet.
// Its commands live in pkg/overlaycmd.
package main

import (
	"github.com/berth-cni/berth/pkg/overlaycmd"
	"github.com/berth-cni/berth/pkg/pluginmain"
)

func main() {
	pluginmain.Run("overlay", pluginmain.Funcs{Add: overlaycmd.Add, Del: overlaycmd.Del, Check: overlaycmd.Check, GC: overlaycmd.GC, Status: overlaycmd.Status})
}
