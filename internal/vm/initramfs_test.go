package vm

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func testImage(t *testing.T) Image {
	t.Helper()
	dir := t.TempDir()
	write := func(rel, data string) string {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	k := &Kernel{Dir: filepath.Join(dir, "kernel"), Release: "6.1.0-57-amd64", Load: []string{"8021q", "esp4", "aesni_intel"}}
	write("kernel/lib/modules/6.1.0-57-amd64/modules.dep", "kernel/net/8021q/8021q.ko:\n")
	write("kernel/lib/modules/6.1.0-57-amd64/kernel/net/8021q/8021q.ko", "ko")
	write("repo/go.mod", "module github.com/berth-cni/berth\n")
	write("repo/conflist/bridge.conflist", "{}")
	write("repo/plugins/bridge/testdata/x.golden", "golden")
	return Image{
		Busybox: write("busybox", "bb"),
		Kernel:  k,
		Tools:   []string{write("host/usr/sbin/ip", "ip")},
		Libs:    []string{write("host/lib/libmnl.so.0", "lib")},
		Bin:     filepath.Dir(write("bin/bridge", "bridge")),
		Extra:   []string{write("build/cnitool", "cnitool")},
		Tests: []TestBinary{{GatedPackage: GatedPackage{Dir: "plugins/bridge", Tests: []string{"TestVlanGateway", "TestVlanTrunk"}},
			Path: write("build/plugins_bridge.test", "test")}},
		RepoRoot:    filepath.Join(dir, "repo"),
		RepoFiles:   []string{"go.mod", "conflist", "plugins/bridge/testdata"},
		Token:       "feedbeef",
		TestTimeout: 5 * time.Minute,
	}
}

// The init script mounts what ip netns and the tests need, loads the
// modules (the optional ones apart), runs each binary from its package's
// directory with exactly its gated tests and BERTH_VM=1, between the
// run's markers, and powers off.
func TestInitScript(t *testing.T) {
	img := testImage(t)
	img.Libs = []string{"/lib/x86_64-linux-gnu/libc.so.6"}
	s := InitScript(img)
	for _, want := range []string{
		"mount -t devtmpfs devtmpfs /dev\n",
		"mount -t tmpfs -o mode=1777 tmpfs /run\n",
		"mount -t tmpfs -o mode=1777 tmpfs /tmp\n",
		"M='@@berth-vm feedbeef'\n",
		"modprobe -a 8021q esp4 || for m in 8021q esp4; do",
		"for m in aesni_intel; do modprobe $m 2>/dev/null",
		"export BERTH_VM=1 BERTH_BIN=/berth/bin ",
		"echo \"$M begin plugins/bridge\"\n" +
			"(cd '/berth/plugins/bridge' && '/berth/tests/plugins_bridge.test' -test.v -test.timeout=5m0s -test.run '^(TestVlanGateway|TestVlanTrunk)$')\n" +
			"rc=$?; [ $rc = 0 ] || failed=1\n" +
			"echo \"$M end plugins/bridge $rc\"\n",
		"echo \"$M done\"\npoweroff -f\n",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("init script lacks %q:\n%s", want, s)
		}
	}
	if strings.Index(s, "modprobe -a") > strings.Index(s, "begin plugins/bridge") {
		t.Error("modules are loaded after the tests start")
	}
	img.Shell = "ip -d link"
	if s := InitScript(img); !strings.Contains(s, "\nip -d link\nfailed=0\n") {
		t.Errorf("the -sh commands are not run before the tests:\n%s", s)
	}
	if got := shQuote(`it's`); got != `'it'\''s'` {
		t.Errorf("shQuote = %s", got)
	}
}

// The archive holds each part where init and the tests look for it.
func TestWriteInitramfs(t *testing.T) {
	img := testImage(t)
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, img); err != nil {
		t.Fatal(err)
	}
	got := map[string]entry{}
	var order []string
	for _, e := range readNewc(t, buf.Bytes()) {
		got[e.name] = e
		order = append(order, e.name)
	}
	for name, data := range map[string]string{
		"bin/busybox":                            "bb",
		"init":                                   InitScript(img),
		"var/run":                                "/run",
		"usr/local/bin/ip":                       "ip",
		img.Libs[0][1:]:                          "lib",
		"berth/bin/bridge":                       "bridge",
		"berth/bin/cnitool":                      "cnitool",
		"berth/tests/plugins_bridge.test":        "test",
		"berth/go.mod":                           "module github.com/berth-cni/berth\n",
		"berth/conflist/bridge.conflist":         "{}",
		"berth/plugins/bridge/testdata/x.golden": "golden",
		"lib/modules/6.1.0-57-amd64/modules.dep": "kernel/net/8021q/8021q.ko:\n",
		"lib/modules/6.1.0-57-amd64/kernel/net/8021q/8021q.ko": "ko",
	} {
		e, ok := got[name]
		if !ok {
			t.Errorf("no %s in the archive", name)
			continue
		}
		if e.data != data {
			t.Errorf("%s holds %q, want %q", name, e.data, data)
		}
	}
	if e := got["init"]; e.mode != modeRegular|0o755 {
		t.Errorf("init mode %o, want an executable file", e.mode)
	}
	if e := got["var/run"]; e.mode&0o170000 != modeSymlink {
		t.Errorf("var/run mode %o, want a symbolic link", e.mode)
	}
	for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "berth/plugins/bridge"} {
		if e, ok := got[d]; !ok || e.mode&0o170000 != modeDir {
			t.Errorf("%s: %+v, want a directory", d, e)
		}
	}
	if i, j := slices.Index(order, "berth/plugins"), slices.Index(order, "berth/plugins/bridge/testdata/x.golden"); i < 0 || i > j {
		t.Errorf("berth/plugins at %d, after its contents at %d", i, j)
	}
}

func TestQEMUArgs(t *testing.T) {
	q := QEMU{Binary: "qemu-system-x86_64", BIOS: DefaultBIOS, Kernel: "/c/vmlinux", Initrd: "/c/initramfs.cpio",
		CPUs: 2, MemMiB: 1024, Accel: "tcg,thread=multi", CPU: "qemu64"}
	got := strings.Join(q.Args(), " ")
	want := "-accel tcg,thread=multi -cpu qemu64 -smp 2 -m 1024 -net none -nodefaults -no-user-config -nographic " +
		"-serial stdio -monitor none -no-reboot -bios /usr/share/qemu/qboot.rom -kernel /c/vmlinux -initrd /c/initramfs.cpio " +
		"-append console=ttyS0 panic=-1 quiet rdinit=/init"
	if got != want {
		t.Errorf("qemu args\n%s\nwant\n%s", got, want)
	}
}
