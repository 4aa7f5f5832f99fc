// Command overlay is berth's overlay CNI plugin: containers of one network
// spread over many hosts, joined by VXLAN. The node agent, berth-overlayd,
// leases this host's subnet and programs the peers; this plugin puts each
// container on the host's overlay bridge with an address from that subnet,
// through the bridge plugin's code (pkg/bridgecmd).
package main

import (
	"runtime"

	"github.com/berth-cni/berth/pkg/pluginmain"
)

func init() { runtime.LockOSThread() }

func main() {
	pluginmain.Run("overlay", pluginmain.Funcs{Add: add, Del: plugin.Del, Check: check, GC: plugin.GC, Status: status})
}
