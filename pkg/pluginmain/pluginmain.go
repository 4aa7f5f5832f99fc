// Package pluginmain wires a berth plugin's commands into the CNI library's
// skel: the spec versions berth speaks, the build string, and the one place
// where Go errors become CNI errors (cnierr.ToCNI).
package pluginmain

import (
	"context"
	"io"
	"os"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-cni/berth/pkg/buildinfo"
	"github.com/berth-cni/berth/pkg/cnierr"
)

// SpecVersions are the CNI spec versions every berth plugin accepts and
// returns results in.
var SpecVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Add writes its result to out; the others print nothing on success.
type (
	AddFunc  func(ctx context.Context, args *skel.CmdArgs, out io.Writer) error
	NoResult func(ctx context.Context, args *skel.CmdArgs) error
)

// Funcs are a plugin's commands; nil ones succeed without doing anything.
type Funcs struct {
	Add    AddFunc
	Del    NoResult
	Check  NoResult
	GC     NoResult
	Status NoResult
}

// Run is a plugin's main. Namespace switches (setns) act on one OS thread,
// so the caller's main goroutine must be locked to the main thread (do it in
// init, before any other goroutine starts); Run locks it too.
func Run(name string, f Funcs) {
	runtime.LockOSThread()
	ctx := context.Background()
	wrap := func(fn NoResult) func(*skel.CmdArgs) error {
		if fn == nil {
			return func(*skel.CmdArgs) error { return nil }
		}
		return func(a *skel.CmdArgs) error { return cnierr.ToCNI(fn(ctx, a)) }
	}
	add := func(a *skel.CmdArgs) error { return cnierr.ToCNI(f.Add(ctx, a, os.Stdout)) }
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    add,
		Del:    wrap(f.Del),
		Check:  wrap(f.Check),
		GC:     wrap(f.GC),
		Status: wrap(f.Status),
	}, SpecVersions, buildinfo.String(name))
}
