// Package pluginmain wires a berth plugin's commands into the CNI library's
// skel: the spec versions berth speaks, the build string, berth's own checks
// of the network config ahead of skel's, and the one place where Go errors
// become CNI errors (cnierr.ToCNI). Run reads the CNI_* environment and
// stdin and writes the result or the CNI error to stdout.
package pluginmain

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-cni/berth/pkg/buildinfo"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/trace"
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

// Run is a plugin's main. Every kernel effect names its namespace
// (pkg/netns), so the commands may run on any thread and start
// goroutines freely.
//
// For the commands that carry a network config, Run reads stdin first and
// answers a config skel would refuse (not JSON, a bad network name, an
// unsupported cniVersion) itself, naming the key and the value; then skel
// gets the same bytes and runs as before.
func Run(name string, f Funcs) {
	trace.Step("start")
	if cmd := os.Getenv("CNI_COMMAND"); carriesConfig(cmd) {
		if err := precheck(cmd); err != nil {
			exit(err)
		}
	}
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

// precheck reads the network config from stdin and validates it; when it
// is good, os.Stdin becomes a pipe with the same bytes, which skel reads.
func precheck(cmd string) error {
	conf, err := readStdin(os.Stdin)
	if err != nil {
		return err
	}
	if err = validateStdin(cmd, conf); err != nil {
		return err
	}
	r, err := replay(conf)
	if err != nil {
		return cnierr.WithCode(types.ErrIOFailure, fmt.Errorf("pass the network config on to skel: %w", err))
	}
	os.Stdin = r
	return nil
}

// exit prints err as a CNI error on stdout and exits 1, as skel does with
// the errors it returns.
func exit(err error) {
	var te *types.Error
	if errors.As(cnierr.ToCNI(err), &te) {
		if perr := te.Print(); perr != nil {
			log.Print("Error writing error JSON to stdout: ", perr)
		}
	}
	os.Exit(1)
}
