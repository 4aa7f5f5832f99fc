// Command portmap is berth's chained port-publishing plugin: host port →
// container port DNAT, with each host port held by one container at a time.
// Its commands live in pkg/portmapcmd.
package main

import (
	"runtime"

	"github.com/berth-cni/berth/pkg/pluginmain"
	"github.com/berth-cni/berth/pkg/portmapcmd"
)

func init() { runtime.LockOSThread() }

func main() {
	pluginmain.Run("portmap", pluginmain.Funcs{Add: portmapcmd.Add, Del: portmapcmd.Del, Check: portmapcmd.Check, GC: portmapcmd.GC, Status: portmapcmd.Status})
}
