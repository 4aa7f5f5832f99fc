// Package integration holds berth's end-to-end tests: the built plugin
// binaries, driven by libcni (what containerd uses) and by cnitool, over the
// files in conflist/, in throwaway network namespaces made by internal/lab.
// They need root; without it they skip, except under CI where a skip fails.
package integration

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// Set once by TestMain: the repository root and the built plugins.
var (
	repoRoot string
	bins     *lab.Binaries
	buildErr error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	repoRoot, err = lab.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if lab.IsRoot() {
		// A run killed before its cleanups leaves namespaces behind.
		if swept, err := lab.SweepStale("blab"); err != nil {
			fmt.Fprintf(os.Stderr, "integration: sweeping stale namespaces: %v\n", err)
		} else if len(swept) > 0 {
			fmt.Fprintf(os.Stderr, "integration: removed %d namespaces of killed runs\n", len(swept))
		}
		dir, err := os.MkdirTemp("", "berth-integration-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		bins, buildErr = lab.Build(ctx, repoRoot, dir)
		cancel()
		if buildErr == nil {
			for name, err := range bins.Errs {
				fmt.Fprintf(os.Stderr, "integration: %s did not build; tests that need it fail:\n%v\n", name, err)
			}
		}
	}
	return m.Run()
}

// needBins fails t unless the named binaries were built.
func needBins(t testing.TB, names ...string) {
	t.Helper()
	if buildErr != nil {
		t.Fatalf("building plugins: %v", buildErr)
	}
	if bins == nil {
		t.Fatal("plugins were not built (TestMain builds them only as root)")
	}
	if err := bins.Need(names...); err != nil {
		t.Fatal(err)
	}
}

var (
	cnitoolOnce sync.Once
	cnitoolPath string
	cnitoolErr  error
)

// cnitool builds cnitool from the pinned cni module, once per run.
func cnitool(t testing.TB) string {
	t.Helper()
	cnitoolOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		cnitoolPath, cnitoolErr = lab.BuildCNITool(ctx, repoRoot, filepath.Join(bins.Dir, "tools"))
	})
	if cnitoolErr != nil {
		t.Fatalf("build cnitool: %v", cnitoolErr)
	}
	return cnitoolPath
}
