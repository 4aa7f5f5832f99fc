package vm

import (
	"strings"
	"testing"
)

var consoleWant = []GatedPackage{
	{Dir: "plugins/bridge", Tests: []string{"TestVlanGateway", "TestVlanIsolation"}},
	{Dir: "internal/lab", Tests: []string{"TestKernelFeatures"}},
}

const tok = "0123abcd"

// feed runs lines through a ConsoleWriter in odd-sized chunks, with the
// serial port's \r\n line ends.
func feed(t *testing.T, lines ...string) (*Console, string) {
	t.Helper()
	c := NewConsole(tok, consoleWant)
	var out strings.Builder
	w := &ConsoleWriter{Out: &out, Console: c}
	text := strings.Join(lines, "\r\n") + "\r\n"
	for len(text) > 0 {
		n := min(7, len(text))
		if _, err := w.Write([]byte(text[:n])); err != nil {
			t.Fatal(err)
		}
		text = text[n:]
	}
	w.Flush()
	return c, out.String()
}

func passing() []string {
	return []string{
		"[    1.2] Run /init as init process",
		"@@berth-vm " + tok + " begin plugins/bridge",
		"=== RUN   TestVlanGateway",
		"=== PAUSE TestVlanGateway",
		"    --- FAIL: TestVlanGateway/sub (0.00s)", // a subtest's line is not the test's
		"--- PASS: TestVlanGateway (1.20s)",
		"--- PASS: TestVlanIsolation (2.00s)",
		"PASS",
		"@@berth-vm " + tok + " end plugins/bridge 0",
		"@@berth-vm " + tok + " begin internal/lab",
		"--- PASS: TestKernelFeatures (0.30s)",
		"@@berth-vm " + tok + " end internal/lab 0",
		"@@berth-vm " + tok + " done",
	}
}

func TestConsolePasses(t *testing.T) {
	c, out := feed(t, passing()...)
	if err := c.Verdict(); err != nil {
		t.Errorf("verdict: %v", err)
	}
	if strings.Contains(out, "\r") || !strings.Contains(out, "--- PASS: TestVlanIsolation (2.00s)\n") {
		t.Errorf("copied output %q: want every line, \\r dropped", out)
	}
	want := "plugins/bridge: 2 passed (exit 0)\ninternal/lab: 1 passed (exit 0)\n"
	if got := c.Summary(); got != want {
		t.Errorf("summary\n%s\nwant\n%s", got, want)
	}
}

// Each way a run can go wrong fails the verdict, naming what.
func TestConsoleFails(t *testing.T) {
	replace := func(old, new string) []string {
		var out []string
		for _, l := range passing() {
			if l == old {
				if new == "" {
					continue
				}
				l = new
			}
			out = append(out, l)
		}
		return out
	}
	m := "@@berth-vm " + tok + " "
	for _, tc := range []struct {
		name  string
		lines []string
		want  string
	}{
		{"failed test", replace("--- PASS: TestVlanIsolation (2.00s)", "--- FAIL: TestVlanIsolation (2.00s)"), "TestVlanIsolation failed"},
		{"skipped test", replace("--- PASS: TestVlanIsolation (2.00s)", "--- SKIP: TestVlanIsolation (0.00s)"), "TestVlanIsolation skipped in the VM"},
		{"test missing", replace("--- PASS: TestVlanIsolation (2.00s)", ""), "TestVlanIsolation did not run"},
		{"exit status", replace(m+"end plugins/bridge 0", m+"end plugins/bridge 1"), "exit status 1"},
		{"no end marker", replace(m+"end plugins/bridge 0", ""), "plugins/bridge: its test binary never reported its end"},
		{"never started", replace(m+"begin internal/lab", ""), "internal/lab: its test binary never started"},
		{"no done", replace(m+"done", ""), "did not reach its end"},
		{"module", append([]string{m + "module-failed esp4"}, passing()...), "module esp4 did not load"},
		// Markers with another token are test output, not markers.
		{"forged end", replace(m+"end plugins/bridge 0", "@@berth-vm ffff end plugins/bridge 0"), "never reported its end"},
		{"bad status", replace(m+"end plugins/bridge 0", m+"end plugins/bridge x"), "exit status -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := feed(t, tc.lines...)
			err := c.Verdict()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("verdict %v, want one naming %q\nsummary:\n%s", err, tc.want, c.Summary())
			}
		})
	}
}

// A last line with no line end (the VM cut off mid-line) still counts.
func TestConsoleFlush(t *testing.T) {
	c := NewConsole(tok, consoleWant)
	var out strings.Builder
	w := &ConsoleWriter{Out: &out, Console: c}
	for _, l := range passing()[:len(passing())-1] {
		if _, err := w.Write([]byte(l + "\n")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := w.Write([]byte("@@berth-vm " + tok + " done")); err != nil {
		t.Fatal(err)
	}
	if c.Verdict() == nil {
		t.Error("passed before the unterminated last line was flushed")
	}
	w.Flush()
	if err := c.Verdict(); err != nil {
		t.Error(err)
	}
}
