package vm

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// KernelMetaPackage is Debian's "newest stock kernel" package; it depends
// on the versioned image package (linux-image-6.1.0-57-amd64, …).
const KernelMetaPackage = "linux-image-amd64"

// BusyboxPackage holds the static busybox that is the VM's userland.
const BusyboxPackage = "busybox-static"

// ParseImageDepends finds the versioned kernel image package in the
// output of `apt-cache depends linux-image-amd64`. Pure.
func ParseImageDepends(out string) (string, error) {
	for _, l := range strings.Split(out, "\n") {
		if dep, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
			return strings.TrimSpace(dep), nil
		}
	}
	return "", fmt.Errorf("apt-cache depends %s names no linux-image-* package", KernelMetaPackage)
}

// ParseVersion finds the Version field in `apt-cache show` output. Pure.
func ParseVersion(out string) (string, error) {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, "Version: "); ok {
			return strings.TrimSpace(v), nil
		}
	}
	return "", errors.New("no Version field")
}

// aptOutput runs an apt command and returns its stdout; the error carries
// stderr and a hint.
func aptOutput(ctx context.Context, dir string, name string, args ...string) (string, error) {
	if _, err := exec.LookPath(name); err != nil {
		return "", fmt.Errorf("%w: %s: %v (the VM layer takes Debian's kernel through apt)", ErrPrerequisite, name, err)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s (is this Debian with apt lists? apt-get update)", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

// KernelImagePackage returns the kernel image package apt would install
// for linux-image-amd64 now.
//
// Equivalent: apt-cache depends linux-image-amd64
func KernelImagePackage(ctx context.Context) (string, error) {
	out, err := aptOutput(ctx, "", "apt-cache", "depends", KernelMetaPackage)
	if err != nil {
		return "", err
	}
	return ParseImageDepends(out)
}

// CandidateVersion returns the version of pkg that apt-get download
// fetches.
//
// Equivalent: apt-cache show --no-all-versions $pkg
func CandidateVersion(ctx context.Context, pkg string) (string, error) {
	out, err := aptOutput(ctx, "", "apt-cache", "show", "--no-all-versions", pkg)
	if err != nil {
		return "", err
	}
	v, err := ParseVersion(out)
	if err != nil {
		return "", fmt.Errorf("apt-cache show %s: %w", pkg, err)
	}
	return v, nil
}

// Download fetches pkg's candidate .deb into dir (kept there: the cache)
// unless a file of that version is already there, and returns its path.
// Nothing is installed.
//
// Equivalent: cd $dir && apt-get download $pkg=$version
func Download(ctx context.Context, dir, pkg, version string) (string, error) {
	// apt-get download names the file pkg_version_arch.deb with the
	// epoch's colon escaped.
	prefix := pkg + "_" + strings.ReplaceAll(version, ":", "%3a") + "_"
	if found, _ := filepath.Glob(filepath.Join(dir, prefix+"*.deb")); len(found) == 1 {
		return found[0], nil
	}
	tmp, err := os.MkdirTemp(dir, ".download-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	// As root, apt drops to the _apt user to download, which cannot write
	// into a root-owned directory; the sandbox user root avoids the
	// warning and the fallback.
	args := []string{"download", pkg + "=" + version}
	if os.Geteuid() == 0 {
		args = append([]string{"-o", "APT::Sandbox::User=root"}, args...)
	}
	if _, err := aptOutput(ctx, tmp, "apt-get", args...); err != nil {
		return "", err
	}
	found, _ := filepath.Glob(filepath.Join(tmp, prefix+"*.deb"))
	if len(found) != 1 {
		return "", fmt.Errorf("apt-get download %s=%s left %v, want one %s*.deb", pkg, version, found, prefix)
	}
	dst := filepath.Join(dir, filepath.Base(found[0]))
	return dst, os.Rename(found[0], dst)
}

// DebFiles calls fn for each regular file of the .deb's data archive, with
// its path ("./boot/vmlinuz-…" as dpkg-deb names it) and contents. The
// whole archive is read: dpkg-deb's decompressing child would hold the
// pipes open past an early stop.
//
// Equivalent: dpkg-deb --fsys-tarfile $deb | tar -t
func DebFiles(ctx context.Context, deb string, fn func(name string, r io.Reader) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	cmd.WaitDelay = 5 * time.Second
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w", deb, err)
	}
	if err := walkTar(out, fn); err != nil {
		cancel()
		_ = cmd.Wait() // killed: the walk's error is the one to report
		return fmt.Errorf("%s: %w", deb, err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("dpkg-deb --fsys-tarfile %s: %w: %s", deb, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func walkTar(r io.Reader, fn func(name string, r io.Reader) error) error {
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := fn(h.Name, tr); err != nil {
			return err
		}
	}
}
