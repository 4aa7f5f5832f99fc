// Command portmap is berth's chained port-publishing plugin: host port →
// container port DNAT, with each host port held by one container at a time.
package main

import (
	"runtime"

	"github.com/berth-cni/berth/pkg/pluginmain"
)

func init() { runtime.LockOSThread() }

func main() {
	pluginmain.Run("portmap", pluginmain.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status})
}
