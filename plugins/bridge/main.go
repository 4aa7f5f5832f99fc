// Command bridge is berth's bridge CNI plugin: containers on a per-network
// Linux bridge, addresses from IPAM, the host as gateway, masquerade out.
package main

import (
	"runtime"

	"github.com/berth-cni/berth/pkg/pluginmain"
)

func init() { runtime.LockOSThread() }

func main() {
	pluginmain.Run("bridge", pluginmain.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status})
}
