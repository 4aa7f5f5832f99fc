package vm

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// CPIO writes an uncompressed "newc" cpio archive, the format the kernel
// unpacks as an initramfs (Documentation/driver-api/early-userspace/
// buffer-format.rst): per entry a 110-byte ASCII header ("070701" and 13
// eight-digit hex fields), the NUL-terminated name, padding to 4 bytes,
// the data, padding to 4 bytes; a "TRAILER!!!" entry last. Every entry has
// uid and gid 0 and mtime 0, so the same inputs give the same bytes.
//
// The kernel creates a file only where its directory already exists, so
// each entry's parent directories are written first (mode 0755) unless
// written before. A second entry of the same name is an error, except a
// directory written again.
type CPIO struct {
	w     *bufio.Writer
	ino   uint32
	dirs  map[string]bool
	names map[string]bool
	err   error
}

// NewCPIO returns a writer of an archive to w. Call Close to finish it.
func NewCPIO(w io.Writer) *CPIO {
	return &CPIO{w: bufio.NewWriterSize(w, 1<<20), dirs: map[string]bool{".": true}, names: map[string]bool{}}
}

// Mode bits of the newc header (those of stat(2)).
const (
	modeDir     = 0o040000
	modeRegular = 0o100000
	modeSymlink = 0o120000
)

// Dir adds the directory name (and its parents).
func (c *CPIO) Dir(name string, perm fs.FileMode) error {
	name, err := c.clean(name)
	if err != nil {
		return err
	}
	if err := c.parents(name); err != nil {
		return err
	}
	if c.dirs[name] {
		return nil
	}
	c.dirs[name] = true
	c.names[name] = true
	return c.entry(name, modeDir|uint32(perm.Perm()), 2, nil, 0)
}

// File adds a regular file holding data.
func (c *CPIO) File(name string, perm fs.FileMode, data []byte) error {
	return c.file(name, perm, bytes.NewReader(data), int64(len(data)))
}

// FileFrom adds a regular file with the contents of the host file src
// (symbolic links followed).
func (c *CPIO) FileFrom(name string, perm fs.FileMode, src string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("cpio %s: %s is not a regular file", name, src)
	}
	return c.file(name, perm, f, st.Size())
}

func (c *CPIO) file(name string, perm fs.FileMode, r io.Reader, size int64) error {
	name, err := c.clean(name)
	if err != nil {
		return err
	}
	if err := c.unique(name); err != nil {
		return err
	}
	if err := c.parents(name); err != nil {
		return err
	}
	return c.entry(name, modeRegular|uint32(perm.Perm()), 1, r, size)
}

// Symlink adds the symbolic link name pointing at target.
func (c *CPIO) Symlink(name, target string) error {
	name, err := c.clean(name)
	if err != nil {
		return err
	}
	if err := c.unique(name); err != nil {
		return err
	}
	if err := c.parents(name); err != nil {
		return err
	}
	return c.entry(name, modeSymlink|0o777, 1, strings.NewReader(target), int64(len(target)))
}

// Has reports whether an entry of that name was written.
func (c *CPIO) Has(name string) bool {
	name, err := c.clean(name)
	return err == nil && c.names[name]
}

// Close writes the trailer and flushes. It does not close the underlying
// writer.
func (c *CPIO) Close() error {
	if c.err != nil {
		return c.err
	}
	if err := c.entry("TRAILER!!!", 0, 1, nil, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

// clean makes name relative ("/bin/sh" and "bin/sh" are one entry) and
// refuses names that leave the archive's root.
func (c *CPIO) clean(name string) (string, error) {
	if c.err != nil {
		return "", c.err
	}
	p := strings.TrimSuffix(strings.TrimPrefix(name, "/"), "/")
	if p == "" || p == ".." || strings.HasPrefix(p, "../") || path.Clean(p) != p {
		return "", fmt.Errorf("cpio: entry name %q is not a clean path", name)
	}
	return p, nil
}

func (c *CPIO) unique(name string) error {
	if c.names[name] {
		return fmt.Errorf("cpio: %s written twice", name)
	}
	c.names[name] = true
	return nil
}

// parents writes the directories above name that are not written yet.
func (c *CPIO) parents(name string) error {
	dir := path.Dir(name)
	if c.dirs[dir] {
		return nil
	}
	if err := c.parents(dir); err != nil {
		return err
	}
	if c.names[dir] {
		return fmt.Errorf("cpio: %s is a file, not a directory for %s", dir, name)
	}
	c.dirs[dir] = true
	c.names[dir] = true
	return c.entry(dir, modeDir|0o755, 2, nil, 0)
}

var zeros [4]byte

// entry writes one header, name and data (size bytes from r).
func (c *CPIO) entry(name string, mode, nlink uint32, r io.Reader, size int64) error {
	if c.err != nil {
		return c.err
	}
	if size > 0xffffffff {
		c.err = fmt.Errorf("cpio: %s is %d bytes, over newc's 4 GiB", name, size)
		return c.err
	}
	ino := uint32(0)
	if name != "TRAILER!!!" {
		c.ino++
		ino = c.ino
	}
	// ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name))
	c.write(zeros[:1])
	c.write(zeros[:pad4(len(hdr)+len(name)+1)])
	if r != nil && size > 0 {
		n, err := io.CopyN(c.w, r, size)
		if err != nil && c.err == nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("%s: file shrank to %d bytes while being copied (want %d)", name, n, size)
			}
			c.err = fmt.Errorf("cpio: %w", err)
		}
	}
	c.write(zeros[:pad4(int(size%4))])
	return c.err
}

func (c *CPIO) write(b []byte) {
	if c.err != nil {
		return
	}
	if _, err := c.w.Write(b); err != nil {
		c.err = fmt.Errorf("cpio: %w", err)
	}
}

// pad4 is the padding that brings n to a multiple of 4.
func pad4(n int) int { return (4 - n%4) % 4 }
