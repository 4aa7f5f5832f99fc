// Command testvm is make test-vm: it runs every test whose body calls
// lab.RequireKernel inside a VM booted from Debian's stock kernel (see
// package vm and the README's Tests section).
//
//	go run ./internal/vm/testvm [-pkg plugins/bridge] [-run TestVlan] [-list]
//
// It touches: the cache directory (-cache), the go build cache, apt's
// package cache only through `apt-get download` into -cache, and one qemu
// process it starts (-net none) and kills by PID past -timeout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/internal/vm"
)

func main() {
	o := vm.Options{Out: os.Stdout}
	var pkgs string
	flag.StringVar(&o.Bin, "bin", "bin", "make build's output directory (relative: to the repository root), copied into the VM as $BERTH_BIN")
	flag.StringVar(&o.Cache, "cache", ".cache/vm", "cache of the kernel, busybox and the build (relative: to the repository root; gitignored)")
	flag.StringVar(&o.Go, "go", "go", "the go command")
	flag.StringVar(&pkgs, "pkg", "", "comma-separated package directories to run (default: every package with gated tests)")
	flag.StringVar(&o.Run, "run", "", "only the gated tests matching this regexp")
	flag.BoolVar(&o.List, "list", false, "list the gated tests per package and exit")
	flag.IntVar(&o.CPUs, "smp", 2, "VM CPUs")
	flag.IntVar(&o.MemMiB, "m", 0, "VM memory in MiB (default: sized from the initramfs, at least 1024)")
	flag.DurationVar(&o.Timeout, "timeout", 10*time.Minute, "kill the VM after this long")
	flag.DurationVar(&o.TestTimeout, "test-timeout", 5*time.Minute, "each test binary's -test.timeout inside the VM")
	flag.StringVar(&o.Accel, "accel", "tcg,thread=multi", "qemu -accel")
	flag.StringVar(&o.CPU, "cpu", "max", "qemu -cpu (max: AES-NI and PCLMUL emulated, the crypto drivers real machines use)")
	flag.StringVar(&o.QEMU, "qemu", "qemu-system-x86_64", "the qemu binary")
	flag.StringVar(&o.Shell, "sh", "", "sh commands the VM's init runs before the tests (to look around in the VM)")
	flag.Parse()
	if pkgs != "" {
		o.Packages = strings.Split(pkgs, ",")
	}
	root, err := lab.RepoRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "test-vm:", err)
		os.Exit(2)
	}
	o.Root = root
	// Relative directories are the repository's, wherever make runs this.
	for _, d := range []*string{&o.Bin, &o.Cache} {
		if !filepath.IsAbs(*d) {
			*d = filepath.Join(root, *d)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := vm.Run(ctx, o); err != nil {
		if errors.Is(err, vm.ErrPrerequisite) && os.Getenv("CI") == "" {
			fmt.Printf("test-vm: SKIP: %v\n(the tests that need kernel features this kernel lacks did not run; with CI set this fails)\n", err)
			return
		}
		fmt.Fprintf(os.Stderr, "test-vm: FAIL\n%v\n", err)
		os.Exit(1)
	}
	if !o.List {
		fmt.Println("test-vm: PASS")
	}
}
