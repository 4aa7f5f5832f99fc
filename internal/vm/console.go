package vm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// The VM's init and the host speak through the serial console. Besides
// the tests' own output, init prints marker lines that start with
// "@@berth-vm <token> ", the token being random per run so that no test
// output can pass for one:
//
//	@@berth-vm <token> module-failed <name>   a module the tests need did not load
//	@@berth-vm <token> begin <dir>            a package's test binary starts
//	@@berth-vm <token> end <dir> <status>     … and exited with that status
//	@@berth-vm <token> done                   every package ran; init powers off
const markerPrefix = "@@berth-vm "

// Marker returns the marker line prefix of a run (with its trailing
// space).
func Marker(token string) string { return markerPrefix + token + " " }

// Result is one top-level test's outcome.
type Result string

const (
	Pass Result = "PASS"
	Fail Result = "FAIL"
	Skip Result = "SKIP"
)

// PackageRun is what the console said about one package's test binary.
type PackageRun struct {
	Dir     string
	Began   bool
	Ended   bool
	Status  int
	Results map[string]Result // top-level test → outcome
}

// Console follows a run's console output line by line and judges it. It
// is pure: Line takes what the serial port printed.
type Console struct {
	marker   string
	want     []GatedPackage
	pkgs     map[string]*PackageRun
	cur      *PackageRun
	done     bool
	modFails []string
}

// NewConsole follows a run of want whose init prints markers with token.
func NewConsole(token string, want []GatedPackage) *Console {
	c := &Console{marker: Marker(token), want: want, pkgs: map[string]*PackageRun{}}
	for _, p := range want {
		c.pkgs[p.Dir] = &PackageRun{Dir: p.Dir, Results: map[string]Result{}}
	}
	return c
}

var resultLine = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): (\S+) \(`)

// Line takes one console line (without its line end; a trailing \r, as
// the serial line discipline adds, is dropped).
func (c *Console) Line(s string) {
	s = strings.TrimSuffix(s, "\r")
	if m, ok := strings.CutPrefix(s, c.marker); ok {
		c.onMarker(strings.Fields(m))
		return
	}
	if c.cur == nil {
		return
	}
	if m := resultLine.FindStringSubmatch(s); m != nil && !strings.Contains(m[2], "/") {
		c.cur.Results[m[2]] = Result(m[1])
	}
}

func (c *Console) onMarker(f []string) {
	if len(f) == 0 {
		return
	}
	switch {
	case f[0] == "module-failed" && len(f) == 2:
		c.modFails = append(c.modFails, f[1])
	case f[0] == "begin" && len(f) == 2:
		if p := c.pkgs[f[1]]; p != nil {
			p.Began, c.cur = true, p
		}
	case f[0] == "end" && len(f) == 3:
		if p := c.pkgs[f[1]]; p != nil && p == c.cur {
			status, err := strconv.Atoi(f[2])
			if err != nil {
				status = -1
			}
			p.Ended, p.Status, c.cur = true, status, nil
		}
	case f[0] == "done" && len(f) == 1:
		c.done = true
	}
}

// Verdict is nil when the run passed: every module loaded, every package
// began and ended with status 0, each of its gated tests passed (a skip
// fails too: the host skipped it for the feature the VM has, so it would
// have run nowhere), and init reached the end. Otherwise it names each
// failure.
func (c *Console) Verdict() error {
	var errs []error
	for _, m := range c.modFails {
		errs = append(errs, fmt.Errorf("module %s did not load in the VM", m))
	}
	for _, w := range c.want {
		p := c.pkgs[w.Dir]
		switch {
		case !p.Began:
			errs = append(errs, fmt.Errorf("%s: its test binary never started", w.Dir))
			continue
		case !p.Ended:
			errs = append(errs, fmt.Errorf("%s: its test binary never reported its end (the VM stopped or timed out inside it)", w.Dir))
		case p.Status != 0:
			errs = append(errs, fmt.Errorf("%s: test binary exit status %d", w.Dir, p.Status))
		}
		for _, t := range w.Tests {
			switch r, ok := p.Results[t]; {
			case !ok && p.Ended:
				errs = append(errs, fmt.Errorf("%s: %s did not run", w.Dir, t))
			case r == Fail:
				errs = append(errs, fmt.Errorf("%s: %s failed", w.Dir, t))
			case r == Skip:
				errs = append(errs, fmt.Errorf("%s: %s skipped in the VM, so it ran nowhere", w.Dir, t))
			}
		}
	}
	if !c.done && len(errs) == 0 {
		errs = append(errs, errors.New("the VM's init did not reach its end"))
	}
	return errors.Join(errs...)
}

// Summary is one line per package: passed, failed, skipped and missing
// gated tests.
func (c *Console) Summary() string {
	var b strings.Builder
	for _, w := range c.want {
		p := c.pkgs[w.Dir]
		by := map[Result][]string{}
		var missing []string
		for _, t := range w.Tests {
			if r, ok := p.Results[t]; ok {
				by[r] = append(by[r], t)
			} else {
				missing = append(missing, t)
			}
		}
		fmt.Fprintf(&b, "%s: %d passed", w.Dir, len(by[Pass]))
		for _, part := range []struct {
			what  string
			tests []string
		}{{"failed", by[Fail]}, {"skipped", by[Skip]}, {"not run", missing}} {
			if len(part.tests) > 0 {
				sort.Strings(part.tests)
				fmt.Fprintf(&b, ", %s: %s", part.what, strings.Join(part.tests, " "))
			}
		}
		switch {
		case p.Ended:
			fmt.Fprintf(&b, " (exit %d)", p.Status)
		case p.Began:
			b.WriteString(" (no end)")
		default:
			b.WriteString(" (never started)")
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// ConsoleWriter copies console bytes to Out as they come and feeds whole
// lines to Console.
type ConsoleWriter struct {
	Out     io.Writer
	Console *Console
	partial []byte
}

func (w *ConsoleWriter) Write(p []byte) (int, error) {
	w.partial = append(w.partial, p...)
	for {
		i := bytes.IndexByte(w.partial, '\n')
		if i < 0 {
			break
		}
		line := w.partial[:i]
		w.Console.Line(string(line))
		if _, err := fmt.Fprintf(w.Out, "%s\n", bytes.TrimSuffix(line, []byte("\r"))); err != nil {
			return len(p), err
		}
		w.partial = w.partial[i+1:]
	}
	return len(p), nil
}

// Flush passes on a last line that has no line end.
func (w *ConsoleWriter) Flush() {
	if len(w.partial) > 0 {
		w.Console.Line(string(w.partial))
		fmt.Fprintf(w.Out, "%s\n", w.partial)
		w.partial = nil
	}
}
