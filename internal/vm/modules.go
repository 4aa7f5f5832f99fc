package vm

import (
	"bytes"
	"debug/elf"
	"fmt"
	"path"
	"slices"
	"sort"
	"strings"
)

// Module is one loadable kernel module of the kernel package.
type Module struct {
	Name    string   // normalised ('-' → '_'), as modprobe and lsmod name it
	Path    string   // under /lib/modules/<release>: kernel/net/8021q/8021q.ko
	Depends []string // names, from modinfo's depends=
	SoftPre []string // modinfo's softdep= "pre:" names: modules or aliases to load first
	Aliases []string // modinfo's alias= patterns
}

// ModName is the module name of a .ko path: its base name without .ko,
// dashes as underscores (the kernel treats them alike).
func ModName(p string) string {
	return strings.ReplaceAll(strings.TrimSuffix(path.Base(p), ".ko"), "-", "_")
}

// ParseModinfo reads a module's .modinfo section (NUL-separated
// key=value strings) into a Module for path p. Pure.
func ParseModinfo(p string, ko []byte) (Module, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return Module{}, fmt.Errorf("module %s: %w", p, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return Module{}, fmt.Errorf("module %s has no .modinfo section", p)
	}
	b, err := s.Data()
	if err != nil {
		return Module{}, fmt.Errorf("module %s .modinfo: %w", p, err)
	}
	m := Module{Name: ModName(p), Path: p}
	for _, kv := range strings.Split(string(b), "\x00") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d != "" {
					m.Depends = append(m.Depends, ModName(d))
				}
			}
		case "alias":
			m.Aliases = append(m.Aliases, v)
		case "softdep":
			// "pre: a b post: c": modprobe loads a and b before the module.
			pre := false
			for _, w := range strings.Fields(v) {
				switch w {
				case "pre:":
					pre = true
				case "post:":
					pre = false
				default:
					if pre {
						m.SoftPre = append(m.SoftPre, w)
					}
				}
			}
		}
	}
	return m, nil
}

// ModuleIndex is every module of a kernel package by name, and the names
// of the modules built into the kernel (modules.builtin).
type ModuleIndex struct {
	Modules map[string]Module
	Builtin map[string]bool
}

// ParseBuiltin reads modules.builtin (one kernel/…/name.ko per line)
// into a set of module names.
func ParseBuiltin(b []byte) map[string]bool {
	set := map[string]bool{}
	for _, l := range strings.Split(string(b), "\n") {
		if l = strings.TrimSpace(l); l != "" {
			set[ModName(l)] = true
		}
	}
	return set
}

// Closure returns the modules that want names (built-in ones need none)
// and everything they depend on, each once, in an order where every
// module comes after its dependencies: an insmod order. A soft
// dependency ("pre:", libcrc32c's crc32c) counts as a dependency when
// something provides it, and joins the module's Depends so that
// modules.dep has it loaded first (busybox's modprobe reads no softdep);
// it names a module or an alias, and of several modules with that alias
// the generic one under kernel/crypto/ is taken, as the emulated CPU may
// lack what the others need. A wanted name that is neither a module nor
// built in is an error. Pure.
func (ix ModuleIndex) Closure(want []string) ([]Module, error) {
	var out []Module
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name, from string) error
	visit = func(name, from string) error {
		switch state[name] {
		case 1:
			return fmt.Errorf("module dependency cycle through %s", name)
		case 2:
			return nil
		}
		m, ok := ix.Modules[name]
		if !ok {
			if ix.Builtin[name] {
				state[name] = 2
				return nil
			}
			if from != "" {
				return fmt.Errorf("module %s (needed by %s) is not in the kernel package", name, from)
			}
			return fmt.Errorf("module %s is neither in the kernel package nor built in", name)
		}
		state[name] = 1
		m.Depends = slices.Clone(m.Depends)
		for _, soft := range m.SoftPre {
			if p, ok := ix.provider(soft); ok && !slices.Contains(m.Depends, p) {
				m.Depends = append(m.Depends, p)
			}
		}
		for _, d := range m.Depends {
			if err := visit(d, name); err != nil {
				return err
			}
		}
		state[name] = 2
		out = append(out, m)
		return nil
	}
	for _, w := range want {
		if err := visit(ModName(w), ""); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// provider is the module that is, or has the alias, name (built-in
// providers need no module: ok is false).
func (ix ModuleIndex) provider(name string) (string, bool) {
	if ix.Builtin[ModName(name)] {
		return "", false
	}
	if _, ok := ix.Modules[ModName(name)]; ok {
		return ModName(name), true
	}
	var paths []string
	byPath := map[string]string{}
	for _, m := range ix.Modules {
		if slices.Contains(m.Aliases, name) {
			paths = append(paths, m.Path)
			byPath[m.Path] = m.Name
		}
	}
	if len(paths) == 0 {
		return "", false
	}
	sort.Slice(paths, func(i, j int) bool {
		gi, gj := strings.HasPrefix(paths[i], "kernel/crypto/"), strings.HasPrefix(paths[j], "kernel/crypto/")
		if gi != gj {
			return gi
		}
		return paths[i] < paths[j]
	})
	return byPath[paths[0]], true
}

// ModulesDep renders modules.dep for mods (a Closure, so that every
// dependency is among them): per module "path: deps", the deps being its
// whole transitive closure with each module before those it needs, as
// depmod writes it (modprobe loads the list from its end). Pure.
func ModulesDep(mods []Module) []byte {
	byName := map[string]Module{}
	for _, m := range mods {
		byName[m.Name] = m
	}
	var b bytes.Buffer
	for _, m := range mods {
		var order []string // dependencies first, as Closure orders them
		seen := map[string]bool{}
		var walk func(name string)
		walk = func(name string) {
			if seen[name] {
				return
			}
			seen[name] = true
			d, ok := byName[name]
			if !ok {
				return // built in
			}
			for _, dd := range d.Depends {
				walk(dd)
			}
			order = append(order, d.Path)
		}
		for _, d := range m.Depends {
			walk(d)
		}
		for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
			order[i], order[j] = order[j], order[i]
		}
		fmt.Fprintf(&b, "%s:", m.Path)
		for _, p := range order {
			fmt.Fprintf(&b, " %s", p)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// ModulesAlias renders modules.alias for mods ("alias pattern name", as
// depmod writes it, sorted). Pure.
func ModulesAlias(mods []Module) []byte {
	var lines []string
	for _, m := range mods {
		for _, a := range m.Aliases {
			lines = append(lines, "alias "+a+" "+m.Name)
		}
	}
	sort.Strings(lines)
	return []byte(strings.Join(lines, "\n") + "\n")
}
