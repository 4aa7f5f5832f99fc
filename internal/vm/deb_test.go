package vm

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
)

func TestParseImageDepends(t *testing.T) {
	out := "linux-image-amd64\n  Depends: linux-image-6.1.0-57-amd64\n"
	if got, err := ParseImageDepends(out); err != nil || got != "linux-image-6.1.0-57-amd64" {
		t.Errorf("ParseImageDepends = %q, %v", got, err)
	}
	// Other dependencies before it are passed over; none at all is an error.
	out = "linux-image-amd64\n  Depends: initramfs-tools\n |Depends: linux-base\n  Depends: linux-image-6.12.9-amd64\n"
	if got, err := ParseImageDepends(out); err != nil || got != "linux-image-6.12.9-amd64" {
		t.Errorf("ParseImageDepends = %q, %v", got, err)
	}
	if _, err := ParseImageDepends("linux-image-amd64\n"); err == nil {
		t.Error("no Depends line accepted")
	}
}

func TestParseVersion(t *testing.T) {
	out := "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nInstalled-Size: 2071\n"
	if got, err := ParseVersion(out); err != nil || got != "1:1.35.0-4+deb12u1+b1" {
		t.Errorf("ParseVersion = %q, %v", got, err)
	}
	if _, err := ParseVersion("Package: x\n"); err == nil {
		t.Error("no Version line accepted")
	}
}

// walkTar passes regular files only, with their contents.
func TestWalkTar(t *testing.T) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "./boot/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "./boot/vmlinuz-6.1.0-57-amd64", Typeflag: tar.TypeReg, Mode: 0o644, Size: 5},
		{Name: "./vmlinuz", Typeflag: tar.TypeSymlink, Linkname: "boot/vmlinuz-6.1.0-57-amd64"},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Size > 0 {
			if _, err := tw.Write([]byte("bzImg")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	var got []string
	err := walkTar(&buf, func(name string, r io.Reader) error {
		b, err := io.ReadAll(r)
		got = append(got, name+"="+string(b))
		return err
	})
	if err != nil || len(got) != 1 || got[0] != "./boot/vmlinuz-6.1.0-57-amd64=bzImg" {
		t.Errorf("walkTar: %v, %v", got, err)
	}
}
