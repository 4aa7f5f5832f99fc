// Command macvlan is berth's macvlan CNI plugin: each container gets a
// macvlan sub-interface of a host NIC (the master), with its own MAC on the
// physical network, addresses from IPAM, and optionally a host shim through
// which the host reaches it.
package main

import (
	"runtime"

	"github.com/berth-cni/berth/pkg/pluginmain"
)

func init() { runtime.LockOSThread() }

func main() {
	pluginmain.Run("macvlan", pluginmain.Funcs{Add: add, Del: del, Check: check, GC: gc, Status: status})
}
