package vm

import (
	"bytes"
	"context"
	"encoding/binary"
	"os/exec"
	"strings"
	"testing"
)

// fakeBzImage lays out a bzImage with sects setup sectors after the boot
// sector and payload at off bytes into the protected-mode code.
func fakeBzImage(sects byte, version uint16, off int, payload []byte) []byte {
	start := (int(sects) + 1) * 512
	if sects == 0 {
		start = 5 * 512
	}
	b := make([]byte, start+off+len(payload)+100)
	b[0x1f1] = sects
	copy(b[0x202:], "HdrS")
	binary.LittleEndian.PutUint16(b[0x206:], version)
	binary.LittleEndian.PutUint32(b[0x248:], uint32(off))
	binary.LittleEndian.PutUint32(b[0x24c:], uint32(len(payload)))
	copy(b[start+off:], payload)
	return b
}

// fakeELF is the 64-byte header of an x86-64 executable with no program
// or section headers.
func fakeELF(machine uint16) []byte {
	b := make([]byte, 64)
	copy(b, "\x7fELF\x02\x01\x01")
	le := binary.LittleEndian
	le.PutUint16(b[16:], 2) // ET_EXEC
	le.PutUint16(b[18:], machine)
	le.PutUint32(b[20:], 1)
	le.PutUint16(b[52:], 64) // e_ehsize
	le.PutUint16(b[54:], 56) // e_phentsize
	le.PutUint16(b[58:], 64) // e_shentsize
	return b
}

func TestPayload(t *testing.T) {
	xzData := append(append([]byte{}, xzMagic...), "rest of the stream"...)
	for _, tc := range []struct {
		name string
		bz   []byte
		want string // the payload, or the error's words
		ok   bool
	}{
		{"one setup sector", fakeBzImage(1, 0x20f, 716, xzData), string(xzData), true},
		{"39 setup sectors (Debian 6.1)", fakeBzImage(39, 0x20f, 100, xzData), string(xzData), true},
		{"setup_sects 0 means 4", fakeBzImage(0, 0x208, 0, xzData), string(xzData), true},
		{"gzip", fakeBzImage(1, 0x20f, 0, []byte("\x1f\x8b\x08rest")), "gzip", false},
		{"zstd", fakeBzImage(1, 0x20f, 0, []byte("\x28\xb5\x2f\xfdrest")), "zstd", false},
		{"old protocol", fakeBzImage(1, 0x206, 0, xzData), "2.06", false},
		{"no header", make([]byte, 4096), "HdrS", false},
		{"short", []byte("MZ"), "HdrS", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Payload(tc.bz)
			if tc.ok {
				if err != nil || string(p) != tc.want {
					t.Errorf("Payload = %q, %v; want %q", p, err, tc.want)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Payload error %v, want one naming %q", err, tc.want)
			}
		})
	}
	// A length that runs past the end of the file.
	bz := fakeBzImage(1, 0x20f, 0, xzData)
	binary.LittleEndian.PutUint32(bz[0x24c:], uint32(len(bz)))
	if _, err := Payload(bz); err == nil || !strings.Contains(err.Error(), "outside") {
		t.Errorf("Payload of an overlong length: %v", err)
	}
}

// Vmlinux undoes the kernel build's compression: xz with the x86 BCJ
// filter and CRC32, the stream's size appended; a stream that does not
// hold an x86-64 ELF is refused.
func TestVmlinux(t *testing.T) {
	if _, err := exec.LookPath("xz"); err != nil {
		t.Skip("needs xz (xz-utils), as make test-vm does")
	}
	compress := func(b []byte) []byte {
		cmd := exec.Command("xz", "--format=xz", "--check=crc32", "--x86", "--lzma2=preset=6", "-c")
		cmd.Stdin = bytes.NewReader(b)
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		return binary.LittleEndian.AppendUint32(out, uint32(len(b)))
	}
	want := fakeELF(62)
	got, err := Vmlinux(context.Background(), fakeBzImage(3, 0x20f, 64, compress(want)))
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Vmlinux = %d bytes, %v; want the %d-byte ELF", len(got), err, len(want))
	}
	for name, b := range map[string][]byte{"arm64 ELF": fakeELF(183), "not ELF": []byte("just text")} {
		if _, err := Vmlinux(context.Background(), fakeBzImage(3, 0x20f, 0, compress(b))); err == nil {
			t.Errorf("%s accepted as a vmlinux", name)
		}
	}
}
