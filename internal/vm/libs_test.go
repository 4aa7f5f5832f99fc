package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// SharedLibs agrees with ldd on the host's ip (iproute2): the same
// libraries, resolved to the same paths, and the interpreter.
func TestSharedLibsLikeLdd(t *testing.T) {
	progs, err := FindTools([]Tool{{Name: "ip", Required: true}})
	if err != nil {
		t.Skipf("no ip here: %v", err)
	}
	got, err := SharedLibs(progs, LibDirs)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ldd", progs[0]).Output()
	if err != nil {
		t.Skipf("no ldd to compare with: %v", err)
	}
	var want []string
	for _, l := range strings.Split(string(out), "\n") {
		f := strings.Fields(l)
		switch {
		case len(f) >= 3 && f[1] == "=>":
			want = append(want, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			want = append(want, f[0]) // the interpreter
		}
	}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("SharedLibs(%s)\n%v\nldd says\n%v", progs[0], got, want)
	}
}

// A program with no PT_INTERP and no dynamic section (a static one, like
// berth's binaries) needs nothing; a required tool the host lacks is an
// error naming its package, an optional one is left out.
func TestSharedLibsStaticAndMissingTools(t *testing.T) {
	p := filepath.Join(t.TempDir(), "static")
	if err := os.WriteFile(p, fakeELF(62), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := SharedLibs([]string{p}, LibDirs); err != nil || len(got) != 0 {
		t.Errorf("SharedLibs(static) = %v, %v; want none", got, err)
	}
	got, err := FindTools([]Tool{{Name: "berth-no-such-tool"}})
	if err != nil || len(got) != 0 {
		t.Errorf("optional missing tool: %v, %v", got, err)
	}
	if _, err := FindTools([]Tool{{Name: "berth-no-such-tool", Required: true, Package: "berth-pkg"}}); err == nil || !strings.Contains(err.Error(), "apt-get install berth-pkg") {
		t.Errorf("required missing tool: %v", err)
	}
}
