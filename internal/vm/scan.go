package vm

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// The gate: a test whose body calls lab.RequireKernel runs in the VM.
const (
	LabImportPath = "github.com/berth-cni/berth/internal/lab"
	GateFunc      = "RequireKernel"
)

// GatedPackage is one package's tests that call the gate.
type GatedPackage struct {
	ImportPath string   // github.com/berth-cni/berth/plugins/bridge
	Dir        string   // relative to the module root, slash-separated: plugins/bridge
	Tests      []string // sorted
}

// RunPattern is the -test.run value that selects exactly p's gated tests.
func (p GatedPackage) RunPattern() string {
	return "^(" + strings.Join(p.Tests, "|") + ")$"
}

// BinaryName is the name of p's test binary in the VM: its directory with
// slashes as underscores, plus ".test" (plugins_bridge.test).
func (p GatedPackage) BinaryName() string {
	return strings.ReplaceAll(p.Dir, "/", "_") + ".test"
}

// ScanGated reads the _test.go files of every package under root (the
// module root, whose import path is module) and returns, per package that
// has any, the Test functions whose body calls lab.RequireKernel: through
// the lab package's name in that file (its default "lab" or an alias), or
// by its bare name in package lab itself or with a dot import. A call in
// a closure in the body (a t.Run subtest) counts; a call in a helper the
// test calls does not, as the scan reads no further than the body.
// Directories named testdata or vendor, or starting with "." or "_", are
// skipped, as the go command does. Pure: reads files only.
func ScanGated(root, module string) ([]GatedPackage, error) {
	byDir := map[string]map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && (d.Name() == "testdata" || d.Name() == "vendor" || strings.HasPrefix(d.Name(), ".") || strings.HasPrefix(d.Name(), "_")) {
				return filepath.SkipDir
			}
			if p != root {
				if _, err := os.Stat(filepath.Join(p, "go.mod")); err == nil {
					return filepath.SkipDir // another module
				}
			}
			return nil
		}
		if !strings.HasSuffix(p, "_test.go") {
			return nil
		}
		tests, err := gatedTestsInFile(p)
		if err != nil {
			return err
		}
		if len(tests) == 0 {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(p))
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if byDir[rel] == nil {
			byDir[rel] = map[string]bool{}
		}
		for _, t := range tests {
			byDir[rel][t] = true
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []GatedPackage
	for dir, set := range byDir {
		p := GatedPackage{ImportPath: module, Dir: dir}
		if dir != "." {
			p.ImportPath += "/" + dir
		}
		for t := range set {
			p.Tests = append(p.Tests, t)
		}
		sort.Strings(p.Tests)
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Dir < out[j].Dir })
	return out, nil
}

// gatedTestsInFile returns the gated Test functions of one file.
func gatedTestsInFile(path string) ([]string, error) {
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
	if err != nil {
		return nil, fmt.Errorf("scan for gated tests: %w", err)
	}
	qual, bare := "", false // how this file names lab.RequireKernel
	for _, imp := range f.Imports {
		p, err := strconv.Unquote(imp.Path.Value)
		if err != nil || p != LabImportPath {
			continue
		}
		switch {
		case imp.Name == nil:
			qual = "lab"
		case imp.Name.Name == ".":
			bare = true
		case imp.Name.Name != "_":
			qual = imp.Name.Name
		}
	}
	if f.Name.Name == "lab" && strings.HasSuffix(filepath.ToSlash(filepath.Dir(path)), "internal/lab") {
		bare = true
	}
	if qual == "" && !bare {
		return nil, nil
	}
	var out []string
	for _, decl := range f.Decls {
		fn, ok := decl.(*ast.FuncDecl)
		if !ok || fn.Recv != nil || fn.Body == nil || !isTestFunc(fn) {
			continue
		}
		found := false
		ast.Inspect(fn.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok || found {
				return !found
			}
			switch fun := call.Fun.(type) {
			case *ast.SelectorExpr:
				if x, ok := fun.X.(*ast.Ident); ok && qual != "" && x.Name == qual && fun.Sel.Name == GateFunc {
					found = true
				}
			case *ast.Ident:
				if bare && fun.Name == GateFunc {
					found = true
				}
			}
			return !found
		})
		if found {
			out = append(out, fn.Name.Name)
		}
	}
	return out, nil
}

// isTestFunc reports whether fn is what go test runs as a test: named
// Test, or Test followed by a character that is not a lower-case letter,
// taking one *testing.T (TestMain takes *testing.M).
func isTestFunc(fn *ast.FuncDecl) bool {
	name := fn.Name.Name
	if !strings.HasPrefix(name, "Test") || name == "TestMain" {
		return false
	}
	if rest := name[len("Test"):]; rest != "" {
		if r, _ := utf8.DecodeRuneInString(rest); unicode.IsLower(r) {
			return false
		}
	}
	params := fn.Type.Params.List
	if len(params) != 1 || len(params[0].Names) > 1 {
		return false
	}
	star, ok := params[0].Type.(*ast.StarExpr)
	if !ok {
		return false
	}
	sel, ok := star.X.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "T"
}
