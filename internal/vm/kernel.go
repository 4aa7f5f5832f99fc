package vm

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// xzMagic starts an xz stream.
var xzMagic = []byte("\xfd7zXZ\x00")

// Payload returns the compressed kernel inside a bzImage (vmlinuz): the
// x86 boot protocol's setup header (at 0x1f1; "HdrS" at 0x202, version
// 2.08 or later) gives payload_offset (0x248) and payload_length (0x24c),
// counted from the protected-mode code, which follows the (setup_sects+1)
// 512-byte sectors of the real-mode part (setup_sects 0 means 4). Pure.
//
// qemu's PVH boot (-bios qboot.rom) wants the ELF vmlinux that payload
// decompresses to, not the bzImage.
func Payload(bz []byte) ([]byte, error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage: no HdrS setup header at 0x202")
	}
	if v := binary.LittleEndian.Uint16(bz[0x206:]); v < 0x208 {
		return nil, fmt.Errorf("bzImage boot protocol %d.%02d has no payload fields (needs 2.08)", v>>8, v&0xff)
	}
	sects := int(bz[0x1f1])
	if sects == 0 {
		sects = 4
	}
	start := (sects + 1) * 512
	off := int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off < 0 || n <= 0 || start+off+n > len(bz) || start+off+n < start {
		return nil, fmt.Errorf("bzImage payload at %d+%d, %d bytes, lies outside its %d bytes", start, off, n, len(bz))
	}
	p := bz[start+off : start+off+n]
	if !bytes.HasPrefix(p, xzMagic) {
		return nil, fmt.Errorf("bzImage payload is not xz (starts % x; %s): only xz kernels are supported", p[:min(6, len(p))], compression(p))
	}
	return p, nil
}

// compression names the format a payload's first bytes announce.
func compression(p []byte) string {
	for _, m := range []struct {
		magic, name string
	}{{"\x1f\x8b", "gzip"}, {"\x28\xb5\x2f\xfd", "zstd"}, {"\x02\x21\x4c\x18", "lz4"}, {"BZh", "bzip2"}, {"\x89LZO", "lzo"}, {"\x5d\x00", "lzma"}} {
		if bytes.HasPrefix(p, []byte(m.magic)) {
			return m.name
		}
	}
	return "unknown format"
}

// Vmlinux decompresses a bzImage's payload into the ELF vmlinux. The
// kernel's xz stream uses the x86 BCJ filter before LZMA2
// (scripts/xz_wrap.sh), which xz-utils decodes and neither busybox's unxz
// nor the pure-Go xz decoders do; the 4-byte size the build appends after
// the stream is ignored (--single-stream).
//
// Equivalent: xz -dc --single-stream < payload
func Vmlinux(ctx context.Context, bz []byte) ([]byte, error) {
	p, err := Payload(bz)
	if err != nil {
		return nil, err
	}
	if _, err := exec.LookPath("xz"); err != nil {
		return nil, fmt.Errorf("%w: decompressing the kernel needs xz (Debian: apt-get install xz-utils): %v", ErrPrerequisite, err)
	}
	cmd := exec.CommandContext(ctx, "xz", "-dc", "--single-stream")
	cmd.Stdin = bytes.NewReader(p)
	var out bytes.Buffer
	var stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("xz -dc: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	if err := checkVmlinux(out.Bytes()); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// checkVmlinux checks that b is a 64-bit x86 ELF executable.
func checkVmlinux(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("decompressed kernel is not ELF: %w", err)
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_EXEC {
		return fmt.Errorf("decompressed kernel is %v %v %v, want a 64-bit x86-64 executable", f.Class, f.Machine, f.Type)
	}
	return nil
}
