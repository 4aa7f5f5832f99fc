// Command null is berth's null CNI plugin, Docker's "none" network: the
// container gets loopback up and nothing else.
package main

import (
	"github.com/berth-cni/berth/pkg/nullcmd"
	"github.com/berth-cni/berth/pkg/pluginmain"
)

func main() {
	pluginmain.Run("null", pluginmain.Funcs{Add: nullcmd.Add, Del: nullcmd.Del, Check: nullcmd.Check, GC: nullcmd.Noop, Status: nullcmd.Noop})
}
