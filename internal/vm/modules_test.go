package vm

import (
	"encoding/binary"
	"slices"
	"strings"
	"testing"
)

// fakeKO is a relocatable ELF with one section, .modinfo, holding info
// (NUL-separated key=value), and the section name table.
func fakeKO(info string) []byte {
	le := binary.LittleEndian
	shstr := "\x00.modinfo\x00.shstrtab\x00"
	b := make([]byte, 64)
	copy(b, "\x7fELF\x02\x01\x01")
	le.PutUint16(b[16:], 1) // ET_REL
	le.PutUint16(b[18:], 62)
	le.PutUint32(b[20:], 1)
	le.PutUint16(b[52:], 64)
	le.PutUint16(b[58:], 64)
	infoOff := len(b)
	b = append(b, info...)
	strOff := len(b)
	b = append(b, shstr...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	shoff := len(b)
	le.PutUint64(b[40:], uint64(shoff))
	le.PutUint16(b[60:], 3) // e_shnum
	le.PutUint16(b[62:], 2) // e_shstrndx
	sh := func(name, typ uint32, off, size int) {
		s := make([]byte, 64)
		le.PutUint32(s[0:], name)
		le.PutUint32(s[4:], typ)
		le.PutUint64(s[24:], uint64(off))
		le.PutUint64(s[32:], uint64(size))
		le.PutUint64(s[48:], 1)
		b = append(b, s...)
	}
	sh(0, 0, 0, 0)
	sh(1, 1, infoOff, len(info))  // .modinfo, SHT_PROGBITS
	sh(10, 3, strOff, len(shstr)) // .shstrtab, SHT_STRTAB
	return b
}

func TestParseModinfo(t *testing.T) {
	ko := fakeKO("alias=rtnl-link-vlan\x00license=GPL\x00depends=mrp,garp\x00name=8021q\x00alias=net-pf-16\x00vermagic=6.1.0 SMP\x00")
	m, err := ParseModinfo("kernel/net/8021q/8021q.ko", ko)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name != "8021q" || !slices.Equal(m.Depends, []string{"mrp", "garp"}) || !slices.Equal(m.Aliases, []string{"rtnl-link-vlan", "net-pf-16"}) {
		t.Errorf("module %+v", m)
	}
	m, err = ParseModinfo("kernel/lib/libcrc32c.ko", fakeKO("softdep=pre: crc32c post: other\x00depends=\x00"))
	if err != nil || !slices.Equal(m.SoftPre, []string{"crc32c"}) {
		t.Errorf("softdep: %+v, %v", m, err)
	}
	// An empty depends= is none; dashes in names are underscores.
	m, err = ParseModinfo("kernel/arch/x86/crypto/aesni-intel.ko", fakeKO("depends=\x00"))
	if err != nil || m.Name != "aesni_intel" || len(m.Depends) != 0 {
		t.Errorf("module %+v, %v", m, err)
	}
	if _, err := ParseModinfo("x.ko", []byte("not elf")); err == nil {
		t.Error("a non-ELF module parsed")
	}
}

// The index of the 8021q example: depmod's modules.dep line for it is
// "kernel/net/8021q/8021q.ko: kernel/net/802/mrp.ko kernel/net/802/garp.ko
// kernel/net/802/stp.ko kernel/net/llc/llc.ko".
var vlanIndex = ModuleIndex{
	Modules: map[string]Module{
		"8021q": {Name: "8021q", Path: "kernel/net/8021q/8021q.ko", Depends: []string{"mrp", "garp"}, Aliases: []string{"rtnl-link-vlan"}},
		"garp":  {Name: "garp", Path: "kernel/net/802/garp.ko", Depends: []string{"stp", "llc"}},
		"mrp":   {Name: "mrp", Path: "kernel/net/802/mrp.ko"},
		"stp":   {Name: "stp", Path: "kernel/net/802/stp.ko", Depends: []string{"llc"}},
		"llc":   {Name: "llc", Path: "kernel/net/llc/llc.ko"},
		"dummy": {Name: "dummy", Path: "kernel/drivers/net/dummy.ko", Aliases: []string{"rtnl-link-dummy"}},
	},
	Builtin: ParseBuiltin([]byte("kernel/crypto/aes_generic.ko\nkernel/net/xfrm/xfrm_algo.ko\n")),
}

func names(ms []Module) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Name)
	}
	return out
}

func TestClosure(t *testing.T) {
	got, err := vlanIndex.Closure([]string{"8021q", "aes-generic", "dummy", "llc"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"mrp", "llc", "stp", "garp", "8021q", "dummy"}; !slices.Equal(names(got), want) {
		t.Errorf("closure %v, want %v (dependencies first, each once, built-ins left out)", names(got), want)
	}
	for _, tc := range []struct {
		ix   ModuleIndex
		want []string
		err  string
	}{
		{vlanIndex, []string{"nosuch"}, "nosuch is neither"},
		{ModuleIndex{Modules: map[string]Module{"a": {Name: "a", Depends: []string{"gone"}}}}, []string{"a"}, "gone (needed by a)"},
		{ModuleIndex{Modules: map[string]Module{"a": {Name: "a", Depends: []string{"b"}}, "b": {Name: "b", Depends: []string{"a"}}}}, []string{"a"}, "cycle"},
	} {
		if _, err := tc.ix.Closure(tc.want); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("Closure(%v) error %v, want %q", tc.want, err, tc.err)
		}
	}
}

// libcrc32c's soft dependency on "crc32c" is the alias of both the
// generic module and the SSE4.2 one: the generic one is loaded first, and
// modules.dep says so; a soft dependency nothing provides is none.
func TestClosureSoftDeps(t *testing.T) {
	ix := ModuleIndex{Modules: map[string]Module{
		"nf_tables":      {Name: "nf_tables", Path: "kernel/net/netfilter/nf_tables.ko", Depends: []string{"libcrc32c"}},
		"libcrc32c":      {Name: "libcrc32c", Path: "kernel/lib/libcrc32c.ko", SoftPre: []string{"crc32c", "nothing-provides-this"}},
		"crc32c_intel":   {Name: "crc32c_intel", Path: "kernel/arch/x86/crypto/crc32c-intel.ko", Aliases: []string{"crc32c", "crypto-crc32c"}},
		"crc32c_generic": {Name: "crc32c_generic", Path: "kernel/crypto/crc32c_generic.ko", Aliases: []string{"crc32c", "crypto-crc32c"}},
	}}
	got, err := ix.Closure([]string{"nf_tables"})
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"crc32c_generic", "libcrc32c", "nf_tables"}; !slices.Equal(names(got), want) {
		t.Errorf("closure %v, want %v", names(got), want)
	}
	want := "kernel/crypto/crc32c_generic.ko:\nkernel/lib/libcrc32c.ko: kernel/crypto/crc32c_generic.ko\n" +
		"kernel/net/netfilter/nf_tables.ko: kernel/lib/libcrc32c.ko kernel/crypto/crc32c_generic.ko\n"
	if got := string(ModulesDep(got)); got != want {
		t.Errorf("modules.dep\n%s\nwant\n%s", got, want)
	}
	if len(ix.Modules["libcrc32c"].Depends) != 0 {
		t.Error("Closure changed the index's module")
	}
}

func TestModulesDepAndAlias(t *testing.T) {
	mods, err := vlanIndex.Closure([]string{"8021q", "dummy"})
	if err != nil {
		t.Fatal(err)
	}
	want := `kernel/net/802/mrp.ko:
kernel/net/llc/llc.ko:
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/802/garp.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/8021q/8021q.ko: kernel/net/802/garp.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko kernel/net/802/mrp.ko
kernel/drivers/net/dummy.ko:
`
	if got := string(ModulesDep(mods)); got != want {
		t.Errorf("modules.dep\n%s\nwant\n%s", got, want)
	}
	if got, want := string(ModulesAlias(mods)), "alias rtnl-link-dummy dummy\nalias rtnl-link-vlan 8021q\n"; got != want {
		t.Errorf("modules.alias\n%s\nwant\n%s", got, want)
	}
}
