package vm

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// A module laid out to cover what the scan must and must not pick.
var scanFixture = map[string]string{
	"go.mod": "module example.com/m\n",
	"a/a_test.go": `package a

import (
	"testing"

	"github.com/berth-cni/berth/internal/lab"
)

func TestGated(t *testing.T) { lab.RequireKernel(t, lab.Kernel8021Q) }

func TestInSubtest(t *testing.T) {
	t.Run("x", func(t *testing.T) { lab.RequireKernel(t, lab.KernelESP) })
}

func TestNotGated(t *testing.T) { lab.RequireRoot(t) }

// A helper is not a test, and a test calling it is not found.
func needsVLAN(t *testing.T) { lab.RequireKernel(t, lab.Kernel8021Q) }

func TestViaHelper(t *testing.T) { needsVLAN(t) }

func Testlower(t *testing.T) { lab.RequireKernel(t) } // not a test: lower case after Test

func BenchmarkGated(b *testing.B) { lab.RequireKernel(b) }

type s struct{}

func (s) TestMethod(t *testing.T) { lab.RequireKernel(t) }

func TestMain(m *testing.M) {}
`,
	"a/ext_test.go": `package a_test

import (
	"testing"

	kl "github.com/berth-cni/berth/internal/lab"
)

func TestAliased(t *testing.T) { kl.RequireKernel(t, kl.KernelDummy) }
`,
	// Another package's RequireKernel of the same name is not the gate.
	"b/b_test.go": `package b

import (
	"testing"

	lab "example.com/other/lab"
)

func TestOtherLab(t *testing.T) { lab.RequireKernel(t) }
`,
	"c/dot_test.go": `package c

import (
	"testing"

	. "github.com/berth-cni/berth/internal/lab"
)

func Test(t *testing.T) { RequireKernel(t, KernelWireGuard) }
`,
	"internal/lab/kernel_test.go": `package lab

import "testing"

func TestKernelFeatures(t *testing.T) { RequireKernel(t) }
`,
	"a/testdata/x_test.go": "package x\nimport \"github.com/berth-cni/berth/internal/lab\"\nfunc TestHidden(t *testing.T) { lab.RequireKernel(t) }\n",
	".cache/vm/y_test.go":  "package y\nimport \"github.com/berth-cni/berth/internal/lab\"\nfunc TestHidden(t *testing.T) { lab.RequireKernel(t) }\n",
	"nested/go.mod":        "module example.com/nested\n",
	"nested/n_test.go":     "package n\nimport \"github.com/berth-cni/berth/internal/lab\"\nfunc TestOther(t *testing.T) { lab.RequireKernel(t) }\n",
	"d/d.go":               "package d\n",
	"d/d_test.go":          "package d\nimport \"testing\"\nfunc TestPlain(t *testing.T) {}\n",
}

func TestScanGated(t *testing.T) {
	root := t.TempDir()
	for name, src := range scanFixture {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := ScanGated(root, "example.com/m")
	if err != nil {
		t.Fatal(err)
	}
	want := []GatedPackage{
		{ImportPath: "example.com/m/a", Dir: "a", Tests: []string{"TestAliased", "TestGated", "TestInSubtest"}},
		{ImportPath: "example.com/m/c", Dir: "c", Tests: []string{"Test"}},
		{ImportPath: "example.com/m/internal/lab", Dir: "internal/lab", Tests: []string{"TestKernelFeatures"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ScanGated\n%+v\nwant\n%+v", got, want)
	}
	if p := want[0].RunPattern(); p != "^(TestAliased|TestGated|TestInSubtest)$" {
		t.Errorf("RunPattern %q", p)
	}
	if n := want[2].BinaryName(); n != "internal_lab.test" {
		t.Errorf("BinaryName %q", n)
	}

	if err := os.WriteFile(filepath.Join(root, "d", "broken_test.go"), []byte("package d\nfunc {"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ScanGated(root, "example.com/m"); err == nil {
		t.Error("a file that does not parse was passed over")
	}
}

// This repository's own gated tests are found: those the VM layer was
// made for.
func TestScanGatedRepo(t *testing.T) {
	got, err := ScanGated("../..", "github.com/berth-cni/berth")
	if err != nil {
		t.Fatal(err)
	}
	for dir, test := range map[string]string{
		"internal/lab":    "TestKernelFeatures",
		"plugins/bridge":  "TestVlanGateway",
		"plugins/macvlan": "TestVlanMaster",
	} {
		i := slices.IndexFunc(got, func(p GatedPackage) bool { return p.Dir == dir })
		if i < 0 || !slices.Contains(got[i].Tests, test) {
			t.Errorf("%s.%s not found among the gated tests %+v", dir, test, got)
		}
	}
}

func TestSelectGated(t *testing.T) {
	all := []GatedPackage{
		{ImportPath: "m/internal/lab", Dir: "internal/lab", Tests: []string{"TestKernelFeatures"}},
		{ImportPath: "m/plugins/bridge", Dir: "plugins/bridge", Tests: []string{"TestVlanGateway", "TestVlanTrunk"}},
	}
	dirs := func(ps []GatedPackage) (out []string) {
		for _, p := range ps {
			out = append(out, p.Dir+":"+p.RunPattern())
		}
		return out
	}
	for _, tc := range []struct {
		pkgs []string
		run  string
		want []string
	}{
		{nil, "", []string{"internal/lab:^(TestKernelFeatures)$", "plugins/bridge:^(TestVlanGateway|TestVlanTrunk)$"}},
		{[]string{"./plugins/bridge/"}, "", []string{"plugins/bridge:^(TestVlanGateway|TestVlanTrunk)$"}},
		{[]string{"m/internal/lab"}, "", []string{"internal/lab:^(TestKernelFeatures)$"}},
		{nil, "Trunk", []string{"plugins/bridge:^(TestVlanTrunk)$"}},
		{nil, "NoSuch", nil},
	} {
		got, err := selectGated(all, tc.pkgs, tc.run)
		if err != nil || !slices.Equal(dirs(got), tc.want) {
			t.Errorf("selectGated(%v, %q) = %v, %v; want %v", tc.pkgs, tc.run, dirs(got), err, tc.want)
		}
	}
	if _, err := selectGated(all, []string{"plugins/macvlan"}, ""); err == nil {
		t.Error("a package with no gated tests was accepted")
	}
	if _, err := selectGated(all, nil, "("); err == nil {
		t.Error("a bad -run regexp was accepted")
	}
	if all[1].Tests[0] != "TestVlanGateway" {
		t.Error("selectGated changed its input")
	}
}
