// Command null is berth's null CNI plugin, Docker's "none" network: the
// container gets loopback up and nothing else.
package main

import (
	"runtime"

	"github.com/berth-cni/berth/pkg/pluginmain"
)

func init() { runtime.LockOSThread() }

func main() {
	pluginmain.Run("null", pluginmain.Funcs{Add: add, Del: del, Check: check, GC: noop, Status: noop})
}
