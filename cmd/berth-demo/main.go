// Command berth-demo shows berth at work in throwaway network namespaces:
// two containers on a bridge network talk to each other and reach an
// "outside" namespace through masquerade, and a container on the null
// network has loopback only and reaches nothing. It runs the built plugins
// (make build puts them in bin/) through libcni, as containerd would, and
// removes everything it made on exit, also on error or Ctrl-C.
//
// It needs root. It never touches the machine's own network: every link,
// address, route and rule lives in namespaces named bdemo-<random>-…, and
// plugin state goes to a temporary directory.
//
// Usage: go run ./cmd/berth-demo -bin bin   (or: make demo)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

func main() {
	os.Exit(run())
}

func run() int {
	binDir := flag.String("bin", "bin", "directory with the built plugins (bridge, null, host-local, overlay, portmap) and berth-overlayd")
	confDir := flag.String("conflist", "", "directory with bridge.conflist and null.conflist (default: conflist/ of the repository)")
	verbose := flag.Bool("v", false, "show the plugins' stderr")
	flag.Parse()

	out := newPrinter(os.Stdout)
	if !lab.IsRoot() {
		out.fail("berth-demo needs root: it creates network namespaces and runs CNI plugins in them", nil)
		return 1
	}
	bin, err := filepath.Abs(*binDir)
	if err != nil {
		out.fail("bin directory", err)
		return 1
	}
	if err = (&lab.Binaries{Dir: bin}).Need("bridge", "null", "host-local", "overlay", "portmap", "berth-overlayd"); err != nil {
		out.fail(fmt.Sprintf("plugins in %s (run make build first)", bin), err)
		return 1
	}
	if *confDir == "" {
		var root string
		if root, err = lab.RepoRoot(); err != nil {
			out.fail("find conflist/ (pass -conflist DIR)", err)
			return 1
		}
		*confDir = filepath.Join(root, "conflist")
	}

	if swept, serr := lab.SweepStale("bdemo"); serr != nil {
		out.fail("remove namespaces left by an earlier, killed demo", serr)
	} else if len(swept) > 0 {
		out.note("removed %d namespaces left by an earlier, killed demo", len(swept))
	}

	// The first Ctrl-C cancels the demo; cleanup then runs to the end.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	var interrupted atomic.Bool
	go func() {
		for range sigs {
			if !interrupted.Swap(true) {
				fmt.Fprintln(os.Stderr, "\ninterrupted: cleaning up (this takes a moment)")
			}
			cancel()
		}
	}()

	tmp, err := os.MkdirTemp("", "berth-demo-")
	if err != nil {
		out.fail("temporary directory", err)
		return 1
	}
	var log io.Writer
	if *verbose {
		log = os.Stderr
	}
	d := &demo{out: out, bin: bin, confDir: *confDir, tmp: tmp, log: log}
	runErr := d.run(ctx)

	out.section("Cleaning up")
	cleanErr := d.cleanup()
	if err := os.RemoveAll(tmp); err != nil {
		cleanErr = errors.Join(cleanErr, err)
	}
	out.check("removed the demo's namespaces and temporary files", cleanErr)
	signal.Stop(sigs)

	fmt.Println()
	switch {
	case interrupted.Load():
		fmt.Println("Interrupted.")
		return 130
	case runErr != nil || out.failed > 0:
		fmt.Printf("%d of %d checks failed.\n", out.failed, out.failed+out.passed)
		return 1
	}
	fmt.Printf("All %d checks passed.\n", out.passed)
	return 0
}

// printer writes the demo's plain-text lines and counts passes and failures.
type printer struct {
	w              io.Writer
	passed, failed int
}

func newPrinter(w io.Writer) *printer { return &printer{w: w} }

func (p *printer) section(title string) { fmt.Fprintf(p.w, "\n%s\n", title) }

func (p *printer) note(format string, args ...any) {
	fmt.Fprintf(p.w, "  %s\n", fmt.Sprintf(format, args...))
}

// check prints "✓ what" when err is nil, else "✗ what: err".
func (p *printer) check(what string, err error) bool {
	if err != nil {
		p.fail(what, err)
		return false
	}
	p.passed++
	fmt.Fprintf(p.w, "  ✓ %s\n", what)
	return true
}

func (p *printer) fail(what string, err error) {
	p.failed++
	if err == nil {
		fmt.Fprintf(p.w, "  ✗ %s\n", what)
		return
	}
	// A joined error prints one cause per line: indent the rest.
	msg := strings.ReplaceAll(err.Error(), "\n", "\n      ")
	fmt.Fprintf(p.w, "  ✗ %s: %s\n", what, msg)
}

// stepTimeout bounds each probe.
const stepTimeout = 10 * time.Second
