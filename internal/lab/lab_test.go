package lab

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestRefusesMachineNamespace(t *testing.T) {
	RequireRoot(t)
	if len(machineNS) == 0 {
		t.Fatal("machine namespace unknown")
	}
	// A thread of ours still in the machine's namespace, not /proc/self:
	// that is the main thread, and a goroutine that Do locked to it and
	// that ended there leaves it parked in that namespace (the runtime
	// cannot end the main thread), so after other tests (the kernel
	// probes) it need not be the machine's. PID 1's may not be openable.
	path := ""
	tasks, _ := filepath.Glob("/proc/self/task/*/ns/net")
	for _, p := range tasks {
		if id, err := statNS(p); err == nil && slices.Contains(machineNS, id) {
			path = p
			break
		}
	}
	if path == "" {
		t.Fatalf("no thread of this process in the machine's namespace %v", machineNS)
	}
	self := &NS{Name: "machine", Path: path, id: machineNS[0]}
	err := self.Do(func() error { return nil })
	if !errors.Is(err, ErrMachineNamespace) {
		t.Fatalf("Do in the machine's namespace: got %v, want ErrMachineNamespace", err)
	}
	if err := self.Start(exec.Command("true")); !errors.Is(err, ErrMachineNamespace) {
		t.Fatalf("Start in the machine's namespace: got %v, want ErrMachineNamespace", err)
	}
}

func TestWorld(t *testing.T) {
	w := NewTestWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("ping", func(t *testing.T) {
		for _, dst := range []netip.Prefix{OutsideUplink4, OutsideUplink6} {
			start := time.Now()
			if err := w.Host.PingWithin(ctx, dst.Addr(), 5*time.Second); err != nil {
				t.Error(err)
			}
			t.Logf("ping %s: %v", dst.Addr(), time.Since(start))
		}
		// Nothing answers here: the ping must fail, not hang.
		if err := w.Outside.PingWithin(ctx, HostUplink4.Addr().Next().Next(), time.Second); err == nil {
			t.Error("ping to an absent address succeeded")
		}
	})
	t.Run("tcp", func(t *testing.T) {
		ln, err := w.Outside.ListenTCP(netip.AddrPortFrom(OutsideUplink4.Addr(), 0))
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		line, err := w.Host.DialTCP(ctx, ln.Addr)
		if err != nil {
			t.Fatal(err)
		}
		remote, err := ln.Accepted(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if remote.Addr() != HostUplink4.Addr() || !strings.Contains(line, remote.Addr().String()) {
			t.Errorf("outside saw %s (line %q), want %s", remote, line, HostUplink4.Addr())
		}
	})
	t.Run("sysctl per namespace", func(t *testing.T) {
		if err := w.Host.WriteSysctl("net/ipv6/conf/all/forwarding", "1"); err != nil {
			t.Fatal(err)
		}
		if v, err := w.Outside.ReadSysctl("net/ipv6/conf/all/forwarding"); err != nil || v != "0" {
			t.Errorf("outside forwarding = %q, %v; want 0 (sysctl leaked across namespaces)", v, err)
		}
		if v, err := w.Host.ReadSysctl("net/ipv6/conf/all/forwarding"); err != nil || v != "1" {
			t.Errorf("host forwarding = %q, %v; want 1", v, err)
		}
	})
	t.Run("nft netlink dump", func(t *testing.T) {
		if _, err := w.Host.NftDumpNetlink(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("routes", func(t *testing.T) {
		rs, err := w.Host.Routes()
		if err != nil {
			t.Fatal(err)
		}
		var defaults int
		for _, r := range rs {
			if r.Dst.Bits() == 0 {
				defaults++
			}
		}
		if defaults != 2 {
			t.Errorf("host has %d default routes, want 2: %+v", defaults, rs)
		}
	})
}

// A DF ping that fits the uplink's MTU (1500) gets its reply; one that does
// not is refused by the sender's kernel with EMSGSIZE, not sent.
func TestPingDF(t *testing.T) {
	RequireRoot(t)
	t.Parallel()
	w := NewTestWorld(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, dst := range []netip.Addr{OutsideUplink4.Addr(), OutsideUplink6.Addr()} {
		if err := w.Host.PingWith(ctx, dst, PingOptions{Size: 1500, DF: true}); err != nil {
			t.Errorf("1500-byte DF ping of %s: %v", dst, err)
		}
		err := w.Host.PingWith(ctx, dst, PingOptions{Size: 1501, DF: true})
		if !errors.Is(err, ErrMsgSize) {
			t.Errorf("1501-byte DF ping of %s = %v, want EMSGSIZE", dst, err)
		}
	}
}

// With $BERTH_BIN set, Build links the binaries there into its directory
// (building nothing), and removing that directory leaves them.
func TestBuildPrebuilt(t *testing.T) {
	src, dir := t.TempDir(), filepath.Join(t.TempDir(), "bin")
	for _, name := range []string{"bridge", "host-local", "cnitool"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv(PrebuiltEnv, src)
	b, err := Build(context.Background(), "/nonexistent", dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Need("bridge", "host-local"); err != nil {
		t.Error(err)
	}
	if err := b.Need("macvlan"); err == nil {
		t.Error("Need(macvlan) passed with no macvlan in $BERTH_BIN")
	}
	tool, err := BuildCNITool(context.Background(), "/nonexistent", filepath.Join(dir, "tools"))
	if err != nil || filepath.Base(tool) != "cnitool" {
		t.Errorf("BuildCNITool = %q, %v", tool, err)
	}
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(src, "bridge")); err != nil {
		t.Errorf("removing Build's directory removed $BERTH_BIN's file: %v", err)
	}
}

func TestSysctlPath(t *testing.T) {
	for key, want := range map[string]string{
		"net.ipv4.ip_forward":               "/proc/sys/net/ipv4/ip_forward",
		"net/ipv4/ip_forward":               "/proc/sys/net/ipv4/ip_forward",
		"net/ipv6/conf/eth0.101/accept_dad": "/proc/sys/net/ipv6/conf/eth0.101/accept_dad",
		"net/ipv6/conf/all/forwarding":      "/proc/sys/net/ipv6/conf/all/forwarding",
	} {
		if got := sysctlPath(key); got != want {
			t.Errorf("sysctlPath(%q) = %q, want %q", key, got, want)
		}
	}
}
