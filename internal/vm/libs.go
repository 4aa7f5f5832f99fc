package vm

import (
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// Tool is a host program the tests run inside the VM, copied there with
// its shared libraries.
type Tool struct {
	Name     string // looked up in PATH (and the sbin directories)
	Required bool   // missing on the host: fail, naming Package; else left out
	Package  string // the Debian package that has it
}

// HostTools are the programs berth's tests exec: iproute2's ip (busybox's
// has no `ip netns`), ss and bridge; and, when the host has them, nft,
// which tests cross-check state with (they fall back to netlink), and
// etcd, which the overlay's multi-host tests start (they skip without it,
// and in the VM layer a skip fails).
var HostTools = []Tool{
	{Name: "ip", Required: true, Package: "iproute2"},
	{Name: "ss", Required: true, Package: "iproute2"},
	{Name: "bridge", Required: true, Package: "iproute2"},
	{Name: "nft", Package: "nftables"},
	{Name: "etcd", Package: "etcd-server"},
}

// LibDirs are where the host's shared libraries are looked for, in order
// (Debian's multiarch directories first); the VM's init points
// LD_LIBRARY_PATH at the same list.
var LibDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// FindTools returns the host paths of tools (PATH, then /usr/sbin and
// /sbin, where a non-root PATH may not look), leaving out the optional
// ones the host lacks.
func FindTools(tools []Tool) ([]string, error) {
	var out []string
	var errs []error
	for _, t := range tools {
		p, err := exec.LookPath(t.Name)
		if err != nil {
			for _, d := range []string{"/usr/sbin", "/sbin"} {
				if st, serr := os.Stat(filepath.Join(d, t.Name)); serr == nil && st.Mode().IsRegular() {
					p, err = filepath.Join(d, t.Name), nil
					break
				}
			}
		}
		switch {
		case err == nil:
			out = append(out, p)
		case t.Required:
			errs = append(errs, fmt.Errorf("the VM's tests need %s (Debian: apt-get install %s): %w", t.Name, t.Package, err))
		}
	}
	return out, errors.Join(errs...)
}

// SharedLibs returns what progs need to run: each one's ELF interpreter
// (PT_INTERP) and its DT_NEEDED libraries, transitively, found in dirs;
// sorted, each once. A static program needs none.
//
// Equivalent: ldd $progs
func SharedLibs(progs []string, dirs []string) ([]string, error) {
	seen := map[string]bool{}
	interps := map[string]bool{} // base names: libc's DT_NEEDED of the loader is the interpreter
	var out []string
	var visit func(p string) error
	visit = func(p string) error {
		f, err := elf.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, ph := range f.Progs {
			if ph.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, ph.Filesz)
			if _, err := ph.ReadAt(b, 0); err != nil {
				return fmt.Errorf("%s: PT_INTERP: %w", p, err)
			}
			if interp := strings.TrimRight(string(b), "\x00"); !seen[interp] {
				seen[interp] = true
				interps[filepath.Base(interp)] = true
				out = append(out, interp)
			}
		}
		needed, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		for _, lib := range needed {
			if interps[lib] {
				continue
			}
			path, err := findLib(lib, dirs)
			if err != nil {
				return fmt.Errorf("%s needs %s: %w", p, lib, err)
			}
			if seen[path] {
				continue
			}
			seen[path] = true
			out = append(out, path)
			if err := visit(path); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range progs {
		if err := visit(p); err != nil {
			return nil, err
		}
	}
	sort.Strings(out)
	return out, nil
}

func findLib(name string, dirs []string) (string, error) {
	if strings.Contains(name, "/") {
		return name, nil
	}
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("not found in %v", dirs)
}
