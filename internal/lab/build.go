package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// UpstreamPlugins are built from the pinned containernetworking/plugins
// module next to berth's own, so the output directory alone is a complete
// CNI_PATH (as `make build` does for bin/).
var UpstreamPlugins = []string{
	"github.com/containernetworking/plugins/plugins/ipam/host-local",
	"github.com/containernetworking/plugins/plugins/ipam/static",
	"github.com/containernetworking/plugins/plugins/ipam/dhcp",
	"github.com/containernetworking/plugins/plugins/main/loopback",
}

// CNIToolPkg is the cnitool of the pinned cni module (a tool in go.mod).
const CNIToolPkg = "github.com/containernetworking/cni/cnitool"

// Binaries is a directory of built plugins and what failed to build.
type Binaries struct {
	Dir  string
	Errs map[string]error // binary name → build error
}

// Need returns an error naming each of names that did not build.
func (b *Binaries) Need(names ...string) error {
	var errs []error
	for _, n := range names {
		if err, ok := b.Errs[n]; ok {
			errs = append(errs, fmt.Errorf("plugin %s did not build: %w", n, err))
		} else if _, err := os.Stat(filepath.Join(b.Dir, n)); err != nil {
			errs = append(errs, fmt.Errorf("plugin %s: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// BerthCommands are the programs besides the plugins that tests run: the
// overlay node agent.
var BerthCommands = []string{"./cmd/berth-overlayd"}

// BerthPlugins lists the plugin packages under root/plugins (directories
// holding Go files), as "./plugins/NAME".
func BerthPlugins(root string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(root, "plugins"))
	if err != nil {
		return nil, err
	}
	var pkgs []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		gofiles, _ := filepath.Glob(filepath.Join(root, "plugins", e.Name(), "*.go"))
		if len(gofiles) > 0 {
			pkgs = append(pkgs, "./plugins/"+e.Name())
		}
	}
	sort.Strings(pkgs)
	return pkgs, nil
}

// PrebuiltEnv names a directory of binaries built beforehand (bin/ of
// `make build`, and cnitool): where it is set, Build and BuildCNITool link
// them instead of building. The VM layer sets it, having no Go toolchain
// inside the VM.
const PrebuiltEnv = "BERTH_BIN"

// Prebuilt returns the path of the binary name in $BERTH_BIN, if that is
// set and holds it.
func Prebuilt(name string) (string, bool) {
	dir := os.Getenv(PrebuiltEnv)
	if dir == "" {
		return "", false
	}
	p := filepath.Join(dir, name)
	return p, fileExists(p)
}

// Build builds berth's plugins, BerthCommands and the upstream IPAM/meta plugins into dir
// (without -race, CGO off, as the Makefile does). A package that fails to
// build is recorded in Errs; the others are still built. With $BERTH_BIN
// set, dir gets a symbolic link to each of its files instead (see
// linkPrebuilt).
//
// Equivalent: go build -o $dir ./plugins/... && go build -o $dir $UpstreamPlugins
func Build(ctx context.Context, root, dir string) (*Binaries, error) {
	if src := os.Getenv(PrebuiltEnv); src != "" {
		if err := linkPrebuilt(src, dir); err != nil {
			return nil, err
		}
		return &Binaries{Dir: dir, Errs: map[string]error{}}, nil
	}
	pkgs, err := BerthPlugins(root)
	if err != nil {
		return nil, err
	}
	for _, c := range BerthCommands {
		if fileExists(filepath.Join(root, c)) {
			pkgs = append(pkgs, c)
		}
	}
	b := &Binaries{Dir: dir, Errs: map[string]error{}}
	for _, group := range [][]string{pkgs, UpstreamPlugins} {
		if len(group) == 0 {
			continue
		}
		if err := goBuild(ctx, root, dir, group...); err == nil {
			continue
		}
		// Build one at a time to learn which failed.
		for _, p := range group {
			if err := goBuild(ctx, root, dir, p); err != nil {
				b.Errs[filepath.Base(p)] = err
			}
		}
	}
	return b, nil
}

// BuildCNITool builds cnitool into dir and returns its path; with
// $BERTH_BIN set it links the cnitool there instead.
func BuildCNITool(ctx context.Context, root, dir string) (string, error) {
	if src := os.Getenv(PrebuiltEnv); src != "" {
		p, ok := Prebuilt("cnitool")
		if !ok {
			return "", fmt.Errorf("cnitool: not in $%s (%s)", PrebuiltEnv, src)
		}
		dst := filepath.Join(dir, "cnitool")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
		return dst, os.Symlink(p, dst)
	}
	if err := goBuild(ctx, root, dir, CNIToolPkg); err != nil {
		return "", err
	}
	return filepath.Join(dir, "cnitool"), nil
}

// linkPrebuilt makes dir (created if missing) hold a symbolic link to each
// regular file in src, so that callers who remove dir afterwards remove
// only the links.
//
// Equivalent: mkdir -p $dir && ln -s $src/* $dir/
func linkPrebuilt(src, dir string) error {
	ents, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("$%s: %w", PrebuiltEnv, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		abs, err := filepath.Abs(filepath.Join(src, e.Name()))
		if err != nil {
			return err
		}
		if err := os.Symlink(abs, filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

func goBuild(ctx context.Context, root, dir string, pkgs ...string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	args := append([]string{"build", "-o", dir + "/"}, pkgs...)
	cmd := exec.CommandContext(ctx, goTool(), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

// goTool returns the go command of the running toolchain when it is there
// (tests run under `go test`), else "go" from PATH.
func goTool() string {
	if goroot := os.Getenv("GOROOT"); goroot != "" {
		if p := filepath.Join(goroot, "bin", "go"); fileExists(p) {
			return p
		}
	}
	return "go"
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
