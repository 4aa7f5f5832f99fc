package main

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/overlay"
	"github.com/berth-cni/berth/pkg/overlay/store/file"
)

// buildAgent builds this command into a temporary directory, or returns
// the one in $BERTH_BIN (the VM layer's, which has no Go toolchain).
func buildAgent(t *testing.T) string {
	t.Helper()
	if p, ok := lab.Prebuilt("berth-overlayd"); ok {
		return p
	}
	bin := filepath.Join(t.TempDir(), "berth-overlayd")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// daemon is the built agent running in a host namespace.
type daemon struct{ *lab.Agent }

// startDaemon runs the binary (with -network ov) the way an operator runs
// it in a namespace:
//
//	nsenter --net=/var/run/netns/$host berth-overlayd -network ov -state-dir $state $args
//
// It is started from a thread already in the namespace (lab's guard
// against the machine's own), and stopped with SIGTERM in t.Cleanup,
// which fails t unless it exits 0 (killed after 10 s).
func startDaemon(t *testing.T, ns *lab.NS, bin, state string, args ...string) *daemon {
	t.Helper()
	return startDaemonTee(t, ns, bin, state, nil, args...)
}

// startDaemonTee is startDaemon that also copies the agent's output to
// tee when not nil.
func startDaemonTee(t *testing.T, ns *lab.NS, bin, state string, tee io.Writer, args ...string) *daemon {
	t.Helper()
	var log io.Writer = lab.TestLog{TB: t, Prefix: ns.Name}
	if tee != nil {
		log = io.MultiWriter(log, tee)
	}
	a, err := lab.StartAgentWith(ns, lab.AgentOptions{
		Bin: bin, Network: "ov", StateDir: state, Args: args,
		Log: log, Nsenter: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Stop(syscall.SIGTERM); err != nil {
			t.Errorf("%s: %v", ns.Name, err)
		}
	})
	return &daemon{a}
}

// waitReady waits up to 20 s until the agent's state file says ready and
// was written by this process.
func (d *daemon) waitReady(t *testing.T) overlay.Local {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	l, err := d.WaitReady(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// healthz asks the agent's default listener, 127.0.0.1:9614 of its
// namespace, dialling from inside it.
func (d *daemon) healthz(t *testing.T) (int, string) {
	t.Helper()
	code, body, err := d.NS.HTTPGet(context.Background(), "http://127.0.0.1:9614/healthz")
	if err != nil {
		t.Fatalf("healthz of %s: %v", d.NS.Name, err)
	}
	return code, body
}

// twoHosts builds the agent and a lab of two hosts on an underlay.
func twoHosts(t *testing.T) (bin string, h1, h2 *lab.NS, u *lab.Underlay) {
	t.Helper()
	lab.RequireRoot(t)
	bin = buildAgent(t)
	ctx := context.Background()
	u, err := lab.NewUnderlay(ctx, "bov")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cerr := u.Close(); cerr != nil {
			t.Errorf("lab cleanup: %v", cerr)
		}
	})
	if h1, err = u.AddHost(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if h2, err = u.AddHost(ctx, 2); err != nil {
		t.Fatal(err)
	}
	return bin, h1, h2, u
}

// The binary, started in each host's namespace with nsenter: both hosts
// become ready and reach each other; SIGTERM exits 0 and marks the state
// not ready; with -release-on-exit the other host drops the peer at once,
// without it the lease stays in the store until its TTL.
func TestDaemon(t *testing.T) {
	bin, h1, h2, _ := twoHosts(t)
	ctx := context.Background()
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "store")
	common := []string{"-cidr", "10.244.0.0/16", "-store", "file", "-store-dir", storeDir, "-lease-ttl", "20s"}
	d1 := startDaemon(t, h1, bin, filepath.Join(dir, "h1"), append(common, "-node", "h1")...)
	d2 := startDaemon(t, h2, bin, filepath.Join(dir, "h2"), append(common, "-node", "h2", "-release-on-exit")...)
	l1, l2 := d1.waitReady(t), d2.waitReady(t)
	if l1.PID != d1.PID() || l2.PID != d2.PID() {
		t.Errorf("Local PIDs %d, %d; processes %d, %d (nsenter execs the agent)", l1.PID, l2.PID, d1.PID(), d2.PID())
	}
	if code, body := d1.healthz(t); code != 200 || body != "ok\n" {
		t.Errorf("h1 healthz: %d %q", code, body)
	}
	if err := h1.PingWithin(ctx, l2.Subnet.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	// h2 stops and releases: h1 drops it long before the 20s TTL.
	if err := d2.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("h2 exit: %v", err)
	}
	if l, lerr := overlay.ReadLocal(d2.StateDir, "ov"); lerr != nil || l.Ready || l.Reason != "agent stopped" {
		t.Errorf("h2 Local after SIGTERM: %+v, %v", l, lerr)
	}
	lab.WaitFor(t, 5*time.Second, "h1 drops the released h2", func() string {
		out, oerr := h1.Output(ctx, "ip", "-4", "route", "show", "dev", l1.Device)
		if oerr != nil {
			return oerr.Error()
		}
		if strings.TrimSpace(string(out)) != "" {
			return "routes on the device: " + string(out)
		}
		return ""
	})

	// h1 stops without releasing: its lease is still in the store.
	if err := d1.Stop(syscall.SIGTERM); err != nil {
		t.Fatalf("h1 exit: %v", err)
	}
	st, err := file.New(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	leases, err := st.Leases(ctx, "ov")
	if err != nil || len(leases) != 1 || leases[0].Host != "h1" || leases[0].Subnet != l1.Subnet {
		t.Errorf("leases after both stopped: %+v, %v; want h1's alone", leases, err)
	}
}
