package vm

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// One file's entry, byte for byte: the header's fields in newc's order,
// the name with its NUL padded to 4, the data padded to 4, then the
// trailer.
func TestCPIOBytes(t *testing.T) {
	var buf bytes.Buffer
	c := NewCPIO(&buf)
	if err := c.File("init", 0o755, []byte("hi!\n!")); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	want := "070701" + "00000001" + "000081ed" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000005" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000" +
		"init\x00" + "\x00" + // 110 + 5 = 115: one byte to 116
		"hi!\n!" + "\x00\x00\x00" +
		"070701" + "00000000" + "00000000" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000000" + "00000000" + "00000000" + "00000000" + "00000000" + "0000000b" + "00000000" +
		"TRAILER!!!\x00" + "\x00\x00\x00" // 110 + 11 = 121: three to 124
	if got := buf.String(); got != want {
		t.Errorf("archive\n%q\nwant\n%q", got, want)
	}
}

// entry is one entry read back by readNewc.
type entry struct {
	name  string
	mode  uint32
	data  string
	nlink uint32
}

// readNewc parses a newc archive strictly: every header at a multiple of
// 4, the magic, hex fields, the name's NUL, zero padding, the trailer
// last.
func readNewc(t *testing.T, b []byte) []entry {
	t.Helper()
	var out []entry
	off := 0
	field := func(i int) uint32 {
		v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
		if err != nil {
			t.Fatalf("offset %d field %d: %v", off, i, err)
		}
		return uint32(v)
	}
	for {
		if off%4 != 0 || off+110 > len(b) {
			t.Fatalf("header at %d of %d bytes", off, len(b))
		}
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("magic %q at %d", b[off:off+6], off)
		}
		mode, nlink, size, namesize := field(1), field(4), int(field(6)), int(field(11))
		nameEnd := off + 110 + namesize
		if b[nameEnd-1] != 0 {
			t.Fatalf("name at %d not NUL-terminated", off)
		}
		name := string(b[off+110 : nameEnd-1])
		dataStart := nameEnd + pad4(110+namesize)
		if !allZero(b[nameEnd:dataStart]) {
			t.Fatalf("%s: name padding not zero", name)
		}
		if name == "TRAILER!!!" {
			if dataStart != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-dataStart)
			}
			return out
		}
		dataEnd := dataStart + size
		next := dataEnd + pad4(size)
		if !allZero(b[dataEnd:next]) {
			t.Fatalf("%s: data padding not zero", name)
		}
		out = append(out, entry{name: name, mode: mode, nlink: nlink, data: string(b[dataStart:dataEnd])})
		off = next
	}
}

func allZero(b []byte) bool { return bytes.Count(b, []byte{0}) == len(b) }

// Parents come before what they hold, once each; names are relative
// whether given with a leading slash or not; symlinks carry their target;
// a name written twice and names leaving the root are refused.
func TestCPIOEntries(t *testing.T) {
	var buf bytes.Buffer
	c := NewCPIO(&buf)
	steps := []error{
		c.File("/usr/local/bin/ip", 0o755, []byte("ELF")),
		c.Dir("usr/local", 0o700), // already written as a parent: no second entry
		c.Symlink("var/run", "/run"),
		c.Dir("/run", 0o755),
		c.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n")),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	for _, bad := range []string{"/usr/local/bin/ip", "etc/hosts"} {
		if err := c.File(bad, 0o644, nil); err == nil {
			t.Errorf("second %s accepted", bad)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, buf.Bytes())
	var lines []string
	for _, e := range got {
		lines = append(lines, fmt.Sprintf("%s %o %d %q", e.name, e.mode, e.nlink, e.data))
	}
	want := []string{
		`usr 40755 2 ""`,
		`usr/local 40755 2 ""`,
		`usr/local/bin 40755 2 ""`,
		`usr/local/bin/ip 100755 1 "ELF"`,
		`var 40755 2 ""`,
		`var/run 120777 1 "/run"`,
		`run 40755 2 ""`,
		`etc 40755 2 ""`,
		`etc/hosts 100644 1 "127.0.0.1 localhost\n"`,
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("entries\n%s\nwant\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	for _, bad := range []string{"", "/", "../x", "a/../../x", "a//b", "./a"} {
		if err := NewCPIO(&bytes.Buffer{}).File(bad, 0o644, nil); err == nil {
			t.Errorf("name %q accepted", bad)
		}
	}
	c2 := NewCPIO(&bytes.Buffer{})
	if err := c2.File("a", 0o644, nil); err != nil {
		t.Fatal(err)
	}
	if err := c2.File("a/b", 0o644, nil); err == nil {
		t.Error("a file under a file accepted")
	}
}

// FileFrom streams a host file; what busybox's cpio (when the host has
// it) lists and extracts from the archive is what went in.
func TestCPIOFileFrom(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	data := bytes.Repeat([]byte("berth"), 1000) // 5000 bytes: padding 0
	if err := os.WriteFile(src, append(data, 'x'), 0o600); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c := NewCPIO(&buf)
	if err := c.FileFrom("bin/prog", 0o755, src); err != nil {
		t.Fatal(err)
	}
	if err := c.FileFrom("bin/dir", 0o755, dir); err == nil {
		t.Error("a directory accepted as a file's source")
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	got := readNewc(t, buf.Bytes())
	if len(got) != 2 || got[1].name != "bin/prog" || got[1].data != string(data)+"x" {
		t.Fatalf("entries %v", got)
	}
	for _, tool := range [][]string{{"cpio"}, {"busybox", "cpio"}} {
		if _, err := exec.LookPath(tool[0]); err != nil {
			continue
		}
		out := t.TempDir()
		cmd := exec.Command(tool[0], append(tool[1:], "-i", "-d")...)
		cmd.Dir, cmd.Stdin = out, bytes.NewReader(buf.Bytes())
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v -i: %v\n%s", tool, err, b)
		}
		b, err := os.ReadFile(filepath.Join(out, "bin", "prog"))
		if err != nil || string(b) != string(data)+"x" {
			t.Errorf("%v extracted %d bytes (%v), want %d", tool, len(b), err, len(data)+1)
		}
		return
	}
	t.Log("no cpio tool here: the archive was checked by the test's own reader only")
}
