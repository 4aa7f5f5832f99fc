package vm

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// Options of a VM run.
type Options struct {
	Root     string   // the module root
	Bin      string   // make build's output directory
	Cache    string   // the cache directory
	Go       string   // the go command
	Packages []string // only these package directories ("plugins/bridge", "./plugins/bridge"); all when empty
	Run      string   // only the gated tests matching this regexp; all when empty
	List     bool     // print the gated tests and stop
	CPUs     int
	MemMiB   int // 0: sized from the initramfs
	Timeout  time.Duration
	// TestTimeout bounds each test binary inside the VM (-test.timeout).
	TestTimeout time.Duration
	Accel       string
	CPU         string
	QEMU        string
	Shell       string    // sh commands the VM's init runs before the tests
	Out         io.Writer // the console and progress
}

// CNIToolPkg is built for the VM too: tests that drive cnitool take it
// from $BERTH_BIN.
const CNIToolPkg = lab.CNIToolPkg

// Run finds the gated tests, prepares the kernel, busybox, the test
// binaries and the initramfs, boots the VM with the console on o.Out and
// returns the verdict: nil when every gated test passed in the VM.
func Run(ctx context.Context, o Options) error {
	start := time.Now()
	module, err := modulePath(o.Root)
	if err != nil {
		return err
	}
	gated, err := ScanGated(o.Root, module)
	if err != nil {
		return err
	}
	if gated, err = selectGated(gated, o.Packages, o.Run); err != nil {
		return err
	}
	if o.List || len(gated) == 0 {
		if len(gated) == 0 {
			fmt.Fprintln(o.Out, "vm: no gated tests selected (a test is gated when its body calls lab.RequireKernel)")
		}
		for _, p := range gated {
			fmt.Fprintf(o.Out, "%s %s\n", p.Dir, p.RunPattern())
		}
		return nil
	}
	q := QEMU{Binary: o.QEMU, BIOS: DefaultBIOS, CPUs: o.CPUs, Accel: o.Accel, CPU: o.CPU, Timeout: o.Timeout}
	if err := CheckQEMU(q); err != nil {
		return err
	}
	if st, err := os.Stat(filepath.Join(o.Bin, "bridge")); err != nil || !st.Mode().IsRegular() {
		return fmt.Errorf("%s has no built plugins (run make build first): %v", o.Bin, err)
	}
	kernel, err := PrepareKernel(ctx, o.Cache, WantModules, o.Out)
	if err != nil {
		return err
	}
	busybox, err := PrepareBusybox(ctx, o.Cache, o.Out)
	if err != nil {
		return err
	}
	tools, err := FindTools(HostTools)
	if err != nil {
		return err
	}
	libs, err := SharedLibs(tools, LibDirs)
	if err != nil {
		return err
	}
	build := filepath.Join(o.Cache, "build")
	if err := os.RemoveAll(build); err != nil {
		return err
	}
	tests, cnitool, err := buildTests(ctx, o, build, gated)
	if err != nil {
		return err
	}
	img := Image{
		Busybox: busybox, Kernel: kernel, Tools: tools, Libs: libs,
		Bin: o.Bin, Extra: []string{cnitool}, Tests: tests,
		RepoRoot: o.Root, RepoFiles: repoFiles(o.Root, gated),
		Token: newToken(), TestTimeout: o.TestTimeout, Shell: o.Shell,
	}
	initrd := filepath.Join(build, "initramfs.cpio")
	size, err := writeInitramfs(initrd, img)
	if err != nil {
		return err
	}
	mem := o.MemMiB
	if mem == 0 {
		// The archive and the files unpacked from it are both in RAM
		// while the kernel unpacks; the tests' tmpfs and processes on top.
		mem = max(1024, int(2*size>>20)+768)
	}
	q.Kernel, q.Initrd, q.MemMiB = kernel.Vmlinux(), initrd, mem
	fmt.Fprintf(o.Out, "vm: %s %s, initramfs %d MiB, %d MiB RAM, %d CPUs; prepared in %.1f s; booting:\n",
		kernel.Package, kernel.Version, size>>20, mem, o.CPUs, time.Since(start).Seconds())
	for _, t := range tests {
		fmt.Fprintf(o.Out, "vm:   %s %s\n", t.Dir, t.RunPattern())
	}
	console := NewConsole(img.Token, gated)
	cw := &ConsoleWriter{Out: o.Out, Console: console}
	booted := time.Now()
	bootErr := Boot(ctx, q, cw)
	cw.Flush()
	fmt.Fprintf(o.Out, "vm: qemu ran %.1f s; make test-vm's whole run %.1f s\n%s",
		time.Since(booted).Seconds(), time.Since(start).Seconds(), console.Summary())
	return errors.Join(bootErr, console.Verdict())
}

// modulePath reads the module path from root's go.mod.
func modulePath(root string) (string, error) {
	f, err := os.Open(filepath.Join(root, "go.mod"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.TrimSpace(m), nil
		}
	}
	return "", fmt.Errorf("%s/go.mod has no module line", root)
}

// selectGated keeps the packages named in pkgs (all when empty) and the
// tests matching run (all when empty); a named package with no gated
// tests is an error, so that a typo does not pass as an empty run. Pure.
func selectGated(gated []GatedPackage, pkgs []string, run string) ([]GatedPackage, error) {
	var re *regexp.Regexp
	if run != "" {
		var err error
		if re, err = regexp.Compile(run); err != nil {
			return nil, fmt.Errorf("-run: %w", err)
		}
	}
	var want []string
	for _, p := range pkgs {
		p = strings.TrimSuffix(strings.TrimPrefix(p, "./"), "/")
		if !slices.ContainsFunc(gated, func(g GatedPackage) bool { return g.Dir == p || g.ImportPath == p }) {
			return nil, fmt.Errorf("package %s has no gated tests (no Test function there calls lab.RequireKernel)", p)
		}
		want = append(want, p)
	}
	var out []GatedPackage
	for _, g := range gated {
		if len(want) > 0 && !slices.Contains(want, g.Dir) && !slices.Contains(want, g.ImportPath) {
			continue
		}
		if re != nil {
			g.Tests = slices.DeleteFunc(slices.Clone(g.Tests), func(t string) bool { return !re.MatchString(t) })
		}
		if len(g.Tests) > 0 {
			out = append(out, g)
		}
	}
	return out, nil
}

// buildTests builds each package's test binary and cnitool, static, into
// dir.
//
// Equivalent: CGO_ENABLED=0 go test -c -o $dir/$name.test $pkg; go build -o $dir/cnitool $CNIToolPkg
func buildTests(ctx context.Context, o Options, dir string, gated []GatedPackage) ([]TestBinary, string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", err
	}
	goCmd := func(args ...string) error {
		cmd := exec.CommandContext(ctx, o.Go, args...)
		cmd.Dir = o.Root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s %s: %w\n%s", o.Go, strings.Join(args, " "), err, out)
		}
		return nil
	}
	var out []TestBinary
	for _, p := range gated {
		bin := filepath.Join(dir, p.BinaryName())
		if err := goCmd("test", "-c", "-trimpath", "-ldflags=-s -w", "-o", bin, p.ImportPath); err != nil {
			return nil, "", err
		}
		out = append(out, TestBinary{GatedPackage: p, Path: bin})
	}
	cnitool := filepath.Join(dir, "cnitool")
	if err := goCmd("build", "-trimpath", "-ldflags=-s -w", "-o", cnitool, CNIToolPkg); err != nil {
		return nil, "", err
	}
	return out, cnitool, nil
}

// repoFiles are the parts of the repository the tests read: go.mod (by
// which lab.RepoRoot knows the root), conflist/, and each gated package's
// testdata/.
func repoFiles(root string, gated []GatedPackage) []string {
	files := []string{"go.mod", "conflist"}
	for _, p := range gated {
		td := filepath.Join(filepath.FromSlash(p.Dir), "testdata")
		if st, err := os.Stat(filepath.Join(root, td)); err == nil && st.IsDir() {
			files = append(files, td)
		}
	}
	return files
}

func writeInitramfs(path string, img Image) (int64, error) {
	f, err := os.Create(path)
	if err != nil {
		return 0, err
	}
	err = WriteInitramfs(f, img)
	st, serr := f.Stat()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = serr
	}
	if err != nil {
		return 0, fmt.Errorf("initramfs %s: %w", path, err)
	}
	return st.Size(), nil
}

func newToken() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand does not fail on Linux
	}
	return hex.EncodeToString(b)
}
