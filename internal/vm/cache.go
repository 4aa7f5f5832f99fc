package vm

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// The cache directory (.cache/vm by default, gitignored) holds:
//
//	debs/<pkg>_<version>_amd64.deb           what apt-get download fetched
//	kernel/<pkg>_<version>-<modules hash>/   vmlinux, manifest.json and
//	    lib/modules/<release>/               the wanted modules' closure,
//	                                         modules.dep, .alias, .builtin
//	busybox/<version>/busybox
//
// keyed by package version (and the module list), so a new Debian kernel
// or busybox, or a changed WantModules, is fetched or extracted once and
// an unchanged one never again.

// Kernel is a kernel package made ready to boot: its ELF vmlinux and the
// modules the VM loads.
type Kernel struct {
	Package string // linux-image-6.1.0-57-amd64
	Version string // 6.1.192-3
	Dir     string `json:"-"` // the cache entry
	// From manifest.json:
	Release string   // 6.1.0-57-amd64, the directory under lib/modules
	Load    []string // wanted modules that are modules (not built in): the VM's init loads each
	Files   []string // every module's path under lib/modules/<release>
}

// Vmlinux is the path of the ELF kernel.
func (k *Kernel) Vmlinux() string { return filepath.Join(k.Dir, "vmlinux") }

// ModulesDir is the host directory that becomes the VM's
// /lib/modules/<release>.
func (k *Kernel) ModulesDir() string { return filepath.Join(k.Dir, "lib", "modules", k.Release) }

// moduleDirs are the parts of the package's module tree whose modules are
// kept in memory while the archive is read (the others' modinfo is
// indexed only): a dependency outside them fails the extraction, naming
// it.
var moduleDirs = []string{"kernel/net/", "kernel/crypto/", "kernel/lib/", "kernel/arch/x86/crypto/", "kernel/drivers/net/"}

// PrepareKernel returns the current Debian kernel (apt's candidate for
// linux-image-amd64), fetching and extracting it into the cache unless it
// is there already. log gets one line per slow step.
func PrepareKernel(ctx context.Context, cache string, want []string, log io.Writer) (*Kernel, error) {
	pkg, err := KernelImagePackage(ctx)
	if err != nil {
		return nil, err
	}
	version, err := CandidateVersion(ctx, pkg)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(strings.Join(want, "\n")))
	k := &Kernel{Package: pkg, Version: version,
		Dir: filepath.Join(cache, "kernel", pkg+"_"+version+"-"+hex.EncodeToString(sum[:4]))}
	if b, err := os.ReadFile(filepath.Join(k.Dir, "manifest.json")); err == nil {
		if err := json.Unmarshal(b, k); err != nil {
			return nil, fmt.Errorf("%s: %w (remove the directory to rebuild it)", k.Dir, err)
		}
		return k, nil
	}
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "vm: fetching %s %s\n", pkg, version)
	deb, err := Download(ctx, debs, pkg, version)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "vm: extracting the kernel and %d modules' closure from %s\n", len(want), filepath.Base(deb))
	if err := extractKernel(ctx, deb, k, want); err != nil {
		return nil, err
	}
	return k, nil
}

// extractKernel reads the .deb once: vmlinuz becomes vmlinux, every
// module's modinfo goes into the index, and the closure of want is
// written with modules.dep, modules.alias and modules.builtin; then
// manifest.json, and the entry is renamed into place.
func extractKernel(ctx context.Context, deb string, k *Kernel, want []string) error {
	var vmlinuz, builtin []byte
	ix := ModuleIndex{Modules: map[string]Module{}}
	kept := map[string][]byte{} // module path → contents
	err := DebFiles(ctx, deb, func(name string, r io.Reader) error {
		name = strings.TrimPrefix(name, "./")
		switch {
		case strings.HasPrefix(name, "boot/vmlinuz-"):
			b, err := io.ReadAll(r)
			vmlinuz = b
			return err
		case strings.HasPrefix(name, "lib/modules/"):
			rest := strings.TrimPrefix(name, "lib/modules/")
			release, p, ok := strings.Cut(rest, "/")
			if !ok {
				return nil
			}
			if k.Release == "" {
				k.Release = release
			} else if k.Release != release {
				return fmt.Errorf("modules of two releases: %s and %s", k.Release, release)
			}
			switch {
			case p == "modules.builtin":
				b, err := io.ReadAll(r)
				builtin = b
				return err
			case strings.HasSuffix(p, ".ko"):
				b, err := io.ReadAll(r)
				if err != nil {
					return err
				}
				m, err := ParseModinfo(p, b)
				if err != nil {
					return err
				}
				ix.Modules[m.Name] = m
				if slices.ContainsFunc(moduleDirs, func(d string) bool { return strings.HasPrefix(p, d) }) {
					kept[p] = b
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if vmlinuz == nil || builtin == nil || k.Release == "" {
		return fmt.Errorf("%s: no boot/vmlinuz-* or lib/modules/*/modules.builtin", deb)
	}
	ix.Builtin = ParseBuiltin(builtin)
	mods, err := ix.Closure(want)
	if err != nil {
		return err
	}
	vmlinux, err := Vmlinux(ctx, vmlinuz)
	if err != nil {
		return err
	}
	tmp := k.Dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	modDir := filepath.Join(tmp, "lib", "modules", k.Release)
	files := map[string][]byte{
		filepath.Join(tmp, "vmlinux"):            vmlinux,
		filepath.Join(modDir, "modules.builtin"): builtin,
		filepath.Join(modDir, "modules.dep"):     ModulesDep(mods),
		filepath.Join(modDir, "modules.alias"):   ModulesAlias(mods),
		filepath.Join(modDir, "modules.order"):   modulesOrder(mods),
	}
	for _, m := range mods {
		b, ok := kept[m.Path]
		if !ok {
			return fmt.Errorf("module %s (%s) is outside the directories read (%v): add its directory to moduleDirs", m.Name, m.Path, moduleDirs)
		}
		files[filepath.Join(modDir, m.Path)] = b
		k.Files = append(k.Files, m.Path)
	}
	for _, w := range want {
		if _, ok := ix.Modules[ModName(w)]; ok {
			k.Load = append(k.Load, ModName(w))
		}
	}
	for p, b := range files {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	manifest, err := json.MarshalIndent(k, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(tmp, "manifest.json"), manifest, 0o644); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(k.Dir), 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, k.Dir); err != nil {
		return err
	}
	// Entries of older kernels or module lists are not used again.
	old, _ := filepath.Glob(filepath.Join(filepath.Dir(k.Dir), "*"))
	for _, o := range old {
		if o != k.Dir {
			os.RemoveAll(o)
		}
	}
	return nil
}

func modulesOrder(mods []Module) []byte {
	var b bytes.Buffer
	for _, m := range mods {
		b.WriteString(m.Path + "\n")
	}
	return b.Bytes()
}

// PrepareBusybox returns the path of a static busybox from the current
// busybox-static package, fetched and extracted into the cache unless it
// is there already.
func PrepareBusybox(ctx context.Context, cache string, log io.Writer) (string, error) {
	version, err := CandidateVersion(ctx, BusyboxPackage)
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "busybox", strings.ReplaceAll(version, ":", "%3a"))
	bin := filepath.Join(dir, "busybox")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	debs := filepath.Join(cache, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", err
	}
	fmt.Fprintf(log, "vm: fetching %s %s\n", BusyboxPackage, version)
	deb, err := Download(ctx, debs, BusyboxPackage, version)
	if err != nil {
		return "", err
	}
	var b []byte
	err = DebFiles(ctx, deb, func(name string, r io.Reader) error {
		if strings.TrimPrefix(name, "./") != "bin/busybox" {
			return nil
		}
		var err error
		b, err = io.ReadAll(r)
		return err
	})
	if err != nil {
		return "", err
	}
	if b == nil {
		return "", fmt.Errorf("%s has no bin/busybox", deb)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	if err := os.WriteFile(bin+".tmp", b, 0o755); err != nil {
		return "", err
	}
	return bin, os.Rename(bin+".tmp", bin)
}
