package pluginmain

// Tests of Run through a built plugin (testdata/plugin), exec'd with CNI_*
// variables and stdin the way a runtime runs it. They need no root: the
// test plugin touches nothing but files in the test's directory.

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// buildTestPlugin builds testdata/plugin into a temporary directory.
//
// Equivalent: go build -o $dir/plugin ./testdata/plugin
func buildTestPlugin(t *testing.T) string {
	t.Helper()
	goCmd := "go"
	if goroot := os.Getenv("GOROOT"); goroot != "" {
		if p := filepath.Join(goroot, "bin", "go"); fileExists(p) {
			goCmd = p
		}
	}
	if _, err := exec.LookPath(goCmd); err != nil {
		t.Skipf("no go command to build the test plugin with: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "plugin")
	cmd := exec.CommandContext(t.Context(), goCmd, "build", "-o", bin, "./testdata/plugin")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test plugin: %v\n%s", err, out)
	}
	return bin
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// outcome is everything a runtime sees of one plugin run, plus the stdin
// each command of the plugin got (by command name).
type outcome struct {
	stdout, stderr string
	exitCode       int
	got            map[string]string
}

// runPlugin runs bin with only the given environment (and PMTEST_DIR, a
// fresh directory for its records) and stdin; a nil stdin is /dev/null.
func runPlugin(t *testing.T, bin string, env []string, stdin []byte) outcome {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.CommandContext(t.Context(), bin)
	cmd.Env = append([]string{"PMTEST_DIR=" + dir}, env...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	o := outcome{stdout: stdout.String(), stderr: stderr.String(), got: map[string]string{}}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		o.exitCode = ee.ExitCode()
	case err != nil:
		t.Fatalf("run test plugin: %v", err)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		o.got[e.Name()] = string(b)
	}
	return o
}

// cniEnv is a complete environment for cmd; CNI_NETNS_OVERRIDE spares the
// test a network namespace of its own (skel would otherwise refuse the
// plugin's own namespace after an ADD or DEL).
func cniEnv(cmd string) []string {
	return []string{"CNI_COMMAND=" + cmd, "CNI_CONTAINERID=c1", "CNI_NETNS=/proc/self/ns/net",
		"CNI_IFNAME=eth0", "CNI_PATH=/nonexistent", "CNI_NETNS_OVERRIDE=1"}
}

func TestRun(t *testing.T) {
	t.Parallel()
	bin := buildTestPlugin(t)

	// The inputs skel used to answer: berth's code and message now, and no
	// command of the plugin ran.
	t.Run("refused", func(t *testing.T) {
		t.Parallel()
		for _, tc := range badStdin {
			for _, cmd := range []string{"ADD", "DEL", "CHECK", "GC", "STATUS"} {
				t.Run(tc.name+"/"+cmd, func(t *testing.T) {
					t.Parallel()
					o := runPlugin(t, bin, cniEnv(cmd), []byte(tc.conf))
					if o.exitCode != 1 {
						t.Errorf("exit code %d, want 1", o.exitCode)
					}
					te := &types.Error{}
					if err := json.Unmarshal([]byte(o.stdout), te); err != nil {
						t.Fatalf("stdout %q is not a CNI error: %v", o.stdout, err)
					}
					wantCNI(t, te, tc.code, tc.has...)
					if len(o.got) != 0 {
						t.Errorf("commands ran: %v", o.got)
					}
					if o.stderr != "" {
						t.Errorf("stderr: %q", o.stderr)
					}
				})
			}
		}
	})

	// Everything else behaves byte for byte as skel.PluginMainFuncs alone
	// did (the test plugin's PMTEST_SKEL=1 mode), and the commands get
	// stdin unchanged.
	t.Run("as before", func(t *testing.T) {
		t.Parallel()
		valid := func(v string) string { return `{"cniVersion":"` + v + `","name":"pm","type":"pmtest"}` }
		big := `{"cniVersion":"1.1.0","name":"pm","pad":"` + strings.Repeat("x", 1<<18) + `"}`
		without := func(env []string, name string) []string {
			var out []string
			for _, kv := range env {
				if !strings.HasPrefix(kv, name+"=") {
					out = append(out, kv)
				}
			}
			return out
		}
		for _, tc := range []struct {
			name  string
			env   []string
			stdin []byte
		}{
			{"ADD 1.1.0", cniEnv("ADD"), []byte(valid("1.1.0"))},
			{"ADD 1.0.0", cniEnv("ADD"), []byte(valid("1.0.0"))},
			{"ADD 0.4.0", cniEnv("ADD"), []byte(valid("0.4.0"))},
			{"ADD 0.3.1", cniEnv("ADD"), []byte(valid("0.3.1"))},
			{"ADD 0.3.0 pretty", cniEnv("ADD"), []byte("{\n  \"cniVersion\": \"0.3.0\",\n  \"name\": \"pm\"\n}\n")},
			{"ADD 256 KiB config", cniEnv("ADD"), []byte(big)},
			{"ADD plugin's own error", cniEnv("ADD"), []byte(`{"cniVersion":"1.1.0","name":"pm","failWith":"x"}`)},
			{"ADD plugin's own netns", without(cniEnv("ADD"), "CNI_NETNS_OVERRIDE"), []byte(valid("1.1.0"))},
			{"DEL", cniEnv("DEL"), []byte(valid("0.3.1"))},
			{"DEL no netns", without(cniEnv("DEL"), "CNI_NETNS"), []byte(valid("1.1.0"))},
			{"CHECK", cniEnv("CHECK"), []byte(valid("0.4.0"))},
			{"CHECK plugin's own error", cniEnv("CHECK"), []byte(`{"cniVersion":"1.0.0","name":"pm","failWith":"y"}`)},
			{"GC", cniEnv("GC"), []byte(`{"cniVersion":"1.1.0","name":"pm","cni.dev/valid-attachments":[]}`)},
			{"STATUS", []string{"CNI_COMMAND=STATUS", "CNI_PATH=/nonexistent"}, []byte(valid("1.1.0"))},
			{"VERSION no stdin", []string{"CNI_COMMAND=VERSION"}, nil},
			{"VERSION empty stdin", []string{"CNI_COMMAND=VERSION"}, []byte{}},
			{"VERSION garbage stdin", []string{"CNI_COMMAND=VERSION"}, []byte("{not json")},
			{"VERSION with config", []string{"CNI_COMMAND=VERSION"}, []byte(valid("9.9.9"))},
			{"no command", nil, []byte(valid("1.1.0"))},
			{"no command no stdin", nil, nil},
			{"unknown command", cniEnv("FROB"), []byte(valid("1.1.0"))},
			{"lower-case command", cniEnv("add"), []byte(valid("1.1.0"))},
			{"ADD no container ID", without(cniEnv("ADD"), "CNI_CONTAINERID"), []byte(valid("1.1.0"))},
			{"ADD bad ifname", append(without(cniEnv("ADD"), "CNI_IFNAME"), "CNI_IFNAME=a/b"), []byte(valid("1.1.0"))},
			{"GC no CNI_PATH", without(cniEnv("GC"), "CNI_PATH"), []byte(valid("1.1.0"))},
		} {
			t.Run(tc.name, func(t *testing.T) {
				t.Parallel()
				got := runPlugin(t, bin, tc.env, tc.stdin)
				want := runPlugin(t, bin, append([]string{"PMTEST_SKEL=1"}, tc.env...), tc.stdin)
				if got.exitCode != want.exitCode || got.stdout != want.stdout || got.stderr != want.stderr {
					t.Errorf("Run: exit %d, stdout %q, stderr %q\nskel alone: exit %d, stdout %q, stderr %q",
						got.exitCode, got.stdout, got.stderr, want.exitCode, want.stdout, want.stderr)
				}
				if len(got.got) != len(want.got) {
					t.Errorf("commands run: %d, skel alone: %d", len(got.got), len(want.got))
				}
				for cmd, in := range want.got {
					if got.got[cmd] != in {
						t.Errorf("%s got stdin of %d bytes, skel alone gave it %d bytes", cmd, len(got.got[cmd]), len(in))
					}
					if in != string(tc.stdin) {
						t.Errorf("%s got stdin of %d bytes, the runtime sent %d", cmd, len(in), len(tc.stdin))
					}
				}
				t.Logf("exit %d, stdout %q, stderr %q, ran %d", got.exitCode, got.stdout, got.stderr, len(got.got))
			})
		}
	})
}
