// Command plugin is a berth plugin for pluginmain's tests. Each command
// records that it ran: a file named after it under $PMTEST_DIR holding the
// stdin it got. ADD prints a result in the config's cniVersion; a config
// with "failWith" makes every command fail with a config error naming it.
//
// With PMTEST_SKEL=1 it hands the same commands to skel.PluginMainFuncs
// directly, as pluginmain.Run did before it checked stdin itself: the
// reference the tests compare Run's output with for input Run lets through.
package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/buildinfo"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/pluginmain"
)

func init() { runtime.LockOSThread() }

type conf struct {
	CNIVersion string  `json:"cniVersion"`
	FailWith   *string `json:"failWith"`
}

// record writes the stdin cmd got to $PMTEST_DIR/cmd, then fails if the
// config asks it to.
func record(cmd string, a *skel.CmdArgs) (*conf, error) {
	if err := os.WriteFile(filepath.Join(os.Getenv("PMTEST_DIR"), cmd), a.StdinData, 0o644); err != nil {
		return nil, err
	}
	var c conf
	if err := json.Unmarshal(a.StdinData, &c); err != nil {
		return nil, err
	}
	if c.FailWith != nil {
		return nil, cnierr.Field("failWith", *c.FailWith, "asked to fail")
	}
	return &c, nil
}

func add(_ context.Context, a *skel.CmdArgs, out io.Writer) error {
	c, err := record("ADD", a)
	if err != nil {
		return err
	}
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		IPs:        []*current.IPConfig{{Address: net.IPNet{IP: net.IPv4(10, 9, 0, 2), Mask: net.CIDRMask(24, 32)}}},
	}
	vr, err := r.GetAsVersion(c.CNIVersion)
	if err != nil {
		return err
	}
	return vr.PrintTo(out)
}

func noResult(cmd string) pluginmain.NoResult {
	return func(_ context.Context, a *skel.CmdArgs) error {
		_, err := record(cmd, a)
		return err
	}
}

func main() {
	f := pluginmain.Funcs{Add: add, Del: noResult("DEL"), Check: noResult("CHECK"), GC: noResult("GC"), Status: noResult("STATUS")}
	if os.Getenv("PMTEST_SKEL") != "1" {
		pluginmain.Run("pmtest", f)
		return
	}
	// pluginmain.Run as it was before it read stdin itself.
	ctx := context.Background()
	wrap := func(fn pluginmain.NoResult) func(*skel.CmdArgs) error {
		return func(a *skel.CmdArgs) error { return cnierr.ToCNI(fn(ctx, a)) }
	}
	skel.PluginMainFuncs(skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return cnierr.ToCNI(f.Add(ctx, a, os.Stdout)) },
		Del:    wrap(f.Del),
		Check:  wrap(f.Check),
		GC:     wrap(f.GC),
		Status: wrap(f.Status),
	}, pluginmain.SpecVersions, buildinfo.String("pmtest"))
}
