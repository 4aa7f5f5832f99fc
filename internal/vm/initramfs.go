package vm

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// WantModules are the modules the VM's init loads (modprobe resolves
// their dependencies from the modules.dep written beside them): the links
// berth makes and the tests make, nftables with the expressions berth
// uses, and IPsec ESP with AES-GCM. Built-in ones are skipped. A module
// added here is in the next make test-vm (the kernel cache is keyed by
// this list).
var WantModules = []string{
	// links
	"veth", "bridge", "br_netfilter", "vxlan", "macvlan", "ipvlan", "8021q", "dummy",
	"wireguard", "geneve", "bonding", "tun",
	// nftables and conntrack
	"nf_tables", "nf_conntrack", "nf_nat", "nft_chain_nat", "nft_nat", "nft_masq",
	"nft_ct", "nft_fib_inet", "nft_fib_ipv4", "nft_fib_ipv6", "nft_redir",
	"nft_reject_inet", "nft_limit", "nft_meta_bridge",
	// IPsec ESP, rfc4106(gcm(aes)); the geniv templates (seqiv) draw their IVs
	// from stdrng, drbg, which the kernel would autoload by its alias
	"xfrm_user", "xfrm_algo", "esp4", "esp6", "gcm", "ghash_generic", "ctr", "seqiv",
	"echainiv", "authenc", "drbg", "aesni_intel", "ghash_clmulni_intel",
}

// OptionalModules may fail to load (they need CPU features an emulated
// CPU may lack); the generic ones above stand in.
var OptionalModules = []string{"aesni_intel", "ghash_clmulni_intel"}

// Layout inside the VM.
const (
	vmRoot     = "/berth"       // a slice of the repository: go.mod, conflist/, each package's testdata/
	vmBin      = "/berth/bin"   // $BERTH_BIN: make build's bin/ and cnitool
	vmTests    = "/berth/tests" // the test binaries
	vmToolsDir = "/usr/local/bin"
)

// TestBinary is one package's test binary and the tests it runs.
type TestBinary struct {
	GatedPackage
	Path string // on the host
}

// Image is everything the initramfs holds, as host paths.
type Image struct {
	Busybox     string
	Kernel      *Kernel
	Tools       []string // host programs, copied to /usr/local/bin
	Libs        []string // their libraries and interpreter, at their host paths
	Bin         string   // directory of built binaries → /berth/bin
	Extra       []string // more host binaries → /berth/bin (cnitool)
	Tests       []TestBinary
	RepoRoot    string   // for go.mod, conflist/ and testdata/
	RepoFiles   []string // relative to RepoRoot: files and directories copied under /berth
	Token       string
	TestTimeout time.Duration
	Shell       string // sh commands run before the tests (make test-vm VMFLAGS=-sh=…, for looking around)
}

// InitScript is the VM's /init (busybox sh): mount what the tests need
// (proc, sys, devtmpfs, tmpfs on /run, /tmp and /dev/shm; /var/run links
// to /run so that `ip netns` works), load the modules, run each test
// binary from its package's directory with its gated tests selected,
// between markers, and power off. Pure.
func InitScript(img Image) string {
	m := Marker(img.Token)
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("#!/bin/busybox sh")
	w("# berth's VM test layer (internal/vm): generated, do not edit.")
	w("/bin/busybox --install -s")
	w("export PATH=%s:/usr/sbin:/usr/bin:/sbin:/bin", vmToolsDir)
	w("mount -t proc proc /proc")
	w("read booted _ < /proc/uptime")
	w("mount -t sysfs sysfs /sys")
	w("mount -t devtmpfs devtmpfs /dev")
	w("mkdir -p /dev/shm /dev/pts")
	w("mount -t devpts devpts /dev/pts")
	for _, d := range []string{"/run", "/tmp", "/dev/shm"} {
		w("mount -t tmpfs -o mode=1777 tmpfs %s", d)
	}
	w("mkdir -p /run/netns")
	w("echo %s > /proc/sys/kernel/printk", "'1 4 1 7'") // the kernel's messages off the console while tests print
	w("M=%s", shQuote(strings.TrimSuffix(m, " ")))
	var load, optional []string
	for _, mod := range img.Kernel.Load {
		if slices.Contains(OptionalModules, mod) {
			optional = append(optional, mod)
		} else {
			load = append(load, mod)
		}
	}
	// One modprobe for all is the quick way; if it fails, one each names
	// the modules that do not load.
	w("modprobe -a %s || for m in %s; do modprobe $m || echo \"$M module-failed $m\"; done", strings.Join(load, " "), strings.Join(load, " "))
	if len(optional) > 0 {
		w("for m in %s; do modprobe $m 2>/dev/null || echo \"optional module $m not loaded\"; done", strings.Join(optional, " "))
	}
	w("ip link set lo up")
	w("export %s=1 %s=%s HOME=/root TMPDIR=/tmp LD_LIBRARY_PATH=%s", lab.VMEnv, lab.PrebuiltEnv, vmBin, strings.Join(LibDirs, ":"))
	w("echo \"berth-vm: kernel $(uname -r), $(nproc) CPUs: init started $booted s after boot, the modules were loaded at $(cut -d' ' -f1 /proc/uptime) s\"")
	if img.Shell != "" {
		w("%s", img.Shell)
	}
	w("failed=0")
	for _, t := range img.Tests {
		w("echo \"$M begin %s\"", t.Dir)
		w("(cd %s && %s -test.v -test.timeout=%s -test.run %s)", shQuote(vmRoot+"/"+t.Dir), shQuote(vmTests+"/"+t.BinaryName()), img.TestTimeout, shQuote(t.RunPattern()))
		w("rc=$?; [ $rc = 0 ] || failed=1")
		w("echo \"$M end %s $rc\"", t.Dir)
	}
	w("if [ $failed = 1 ]; then echo '--- the kernel log, warnings and worse:'; dmesg -r | grep '^<[0-4]>' | tail -n 40; fi")
	w("echo \"$M done\"")
	w("poweroff -f")
	return b.String()
}

// shQuote quotes s for sh.
func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// WriteInitramfs writes img as an uncompressed newc cpio archive to w.
func WriteInitramfs(w io.Writer, img Image) error {
	c := NewCPIO(w)
	steps := []func() error{
		func() error { return c.FileFrom("bin/busybox", 0o755, img.Busybox) },
		func() error { return c.File("init", 0o755, []byte(InitScript(img))) },
		func() error {
			// /var/lib and /opt: tests bind-mount over them (cnitool's /var/lib/cni).
			for _, d := range []string{"proc", "sys", "dev", "run", "tmp", "root", "etc", "sbin", "usr/bin", "usr/sbin", "var/lib", "var/tmp", "opt"} {
				if err := c.Dir(d, 0o755); err != nil {
					return err
				}
			}
			return c.Symlink("var/run", "/run")
		},
		func() error {
			return c.File("etc/hosts", 0o644, []byte("127.0.0.1 localhost\n::1 localhost\n"))
		},
		func() error {
			// Names nft and ss print, when the host has them.
			for _, f := range []string{"/etc/protocols", "/etc/services", "/etc/iproute2/rt_tables"} {
				if _, err := os.Stat(f); err == nil {
					if err := c.FileFrom(f, 0o644, f); err != nil {
						return err
					}
				}
			}
			return nil
		},
		func() error { return copyTree(c, img.Kernel.ModulesDir(), "lib/modules/"+img.Kernel.Release) },
		func() error {
			for _, t := range img.Tools {
				if err := c.FileFrom(vmToolsDir+"/"+filepath.Base(t), 0o755, t); err != nil {
					return err
				}
			}
			for _, l := range img.Libs {
				if err := c.FileFrom(l, 0o755, l); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			if err := copyTree(c, img.Bin, vmBin); err != nil {
				return err
			}
			for _, e := range img.Extra {
				if err := c.FileFrom(vmBin+"/"+filepath.Base(e), 0o755, e); err != nil {
					return err
				}
			}
			return nil
		},
		func() error {
			for _, t := range img.Tests {
				if err := c.FileFrom(vmTests+"/"+t.BinaryName(), 0o755, t.Path); err != nil {
					return err
				}
				if err := c.Dir(vmRoot+"/"+t.Dir, 0o755); err != nil {
					return err
				}
			}
			for _, f := range img.RepoFiles {
				if err := copyTree(c, filepath.Join(img.RepoRoot, f), vmRoot+"/"+filepath.ToSlash(f)); err != nil {
					return err
				}
			}
			return nil
		},
		c.Close,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	return nil
}

// copyTree adds the host file or directory tree src as dst: regular
// files keep their permission bits, symbolic links are followed.
func copyTree(c *CPIO, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := dst
		if rel != "." {
			name = dst + "/" + filepath.ToSlash(rel)
		}
		st, err := os.Stat(p)
		if err != nil {
			return err
		}
		if st.IsDir() {
			return c.Dir(name, st.Mode().Perm())
		}
		return c.FileFrom(name, st.Mode().Perm(), p)
	})
}
