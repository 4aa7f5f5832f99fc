package main

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// With etcd (in the underlay namespace, reached over the underlay): the
// hosts mesh; etcd down for longer than the lease TTL makes the agents
// lose their leases and say so, yet the overlay keeps carrying traffic
// (the kernel state is never dropped for a store outage); etcd back, they
// are ready again on the same subnets.
func TestDaemonEtcd(t *testing.T) {
	bin, h1, h2, u := twoHosts(t)
	ctx := context.Background()
	e := lab.StartTestEtcd(t, ctx, lab.EtcdOptions{
		NetNS: u.NS, ClientURL: "http://192.168.77.1:2379", PeerURL: "http://192.168.77.1:2380",
	})
	dir := t.TempDir()
	common := []string{"-cidr", "10.244.0.0/16", "-store", "etcd", "-etcd-endpoints", e.Endpoint(), "-lease-ttl", "3s"}
	d1 := startDaemon(t, h1, bin, filepath.Join(dir, "h1"), append(common, "-node", "h1")...)
	d2 := startDaemon(t, h2, bin, filepath.Join(dir, "h2"), append(common, "-node", "h2")...)
	l1, l2 := d1.waitReady(t), d2.waitReady(t)
	if err := h1.PingWithin(ctx, l2.Subnet.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}

	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, 30*time.Second, "h1 reports its lost lease", func() string {
		code, body := d1.healthz(t)
		if code != 503 || !strings.Contains(body, "lost") {
			return body
		}
		return ""
	})
	if err := h1.PingWithin(ctx, l2.Subnet.Addr(), 5*time.Second); err != nil {
		t.Fatalf("the overlay stopped carrying traffic during the store outage: %v", err)
	}

	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if l := d1.waitReady(t); l.Subnet != l1.Subnet {
		t.Errorf("h1 leased %s after the outage, had %s", l.Subnet, l1.Subnet)
	}
	if l := d2.waitReady(t); l.Subnet != l2.Subnet {
		t.Errorf("h2 leased %s after the outage, had %s", l.Subnet, l2.Subnet)
	}
	if err := h2.PingWithin(ctx, l1.Subnet.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// Over TLS with client certificates and etcd's authentication, protected
// as the README says (a role limited to /berth/, 0600 files): a wrong
// password stops the agent at once, naming the authentication; an agent
// started while etcd is down waits for it (clientv3 authenticates before
// the agent's first request) and is ready once it is back; a second host
// joins and the two reach each other. No output carries the password.
func TestDaemonEtcdTLSAuth(t *testing.T) {
	bin, h1, h2, u := twoHosts(t)
	ctx := context.Background()
	pki := lab.NewTestPKI(t, netip.MustParseAddr("192.168.77.1"))
	e := lab.StartTestEtcd(t, ctx, lab.EtcdOptions{
		NetNS: u.NS, ClientURL: "https://192.168.77.1:2379", PeerURL: "http://192.168.77.1:2380",
		CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientCAFile: pki.CAFile, ClientCertAuth: true,
		ProbeTLS: pki.ClientTLS(),
	})
	const password, wrong = "agent-pa55-w0rd", "wr0ng-pa55"
	if err := e.EnableAuth(ctx, pki.ClientTLS(), "root-"+password, lab.EtcdUser{Name: "berth", Password: password, Prefix: "/berth/"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pwFile, wrongFile := filepath.Join(dir, "pw"), filepath.Join(dir, "wrong")
	for file, pw := range map[string]string{pwFile: password, wrongFile: wrong} {
		if err := os.WriteFile(file, []byte(pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	common := []string{"-cidr", "10.244.0.0/16", "-store", "etcd", "-etcd-endpoints", e.Endpoint(), "-lease-ttl", "5s",
		"-etcd-ca", pki.CAFile, "-etcd-cert", pki.ClientCert, "-etcd-key", pki.ClientKey, "-etcd-user", "berth"}
	var out1, out2, outWrong syncBuffer

	bad := startDaemonTee(t, h2, bin, filepath.Join(dir, "h2"), &outWrong, append(common, "-node", "h2", "-etcd-password-file", wrongFile)...)
	rctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := bad.WaitReady(rctx); err == nil || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("an agent with a wrong password: %v; want it to exit 1", err)
	}
	if !strings.Contains(outWrong.String(), "authentication failed") {
		t.Errorf("the agent with a wrong password said %q; want authentication failed", outWrong.String())
	}

	if err := e.Stop(); err != nil {
		t.Fatal(err)
	}
	d1 := startDaemonTee(t, h1, bin, filepath.Join(dir, "h1"), &out1, append(common, "-node", "h1", "-etcd-password-file", pwFile)...)
	lab.WaitFor(t, 20*time.Second, "h1 waits for the stopped etcd", func() string {
		if !strings.Contains(out1.String(), "store unavailable") {
			return fmt.Sprintf("no store unavailable in its output: %q", out1.String())
		}
		return ""
	})
	if err := e.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	l1 := d1.waitReady(t)
	d2 := startDaemonTee(t, h2, bin, filepath.Join(dir, "h2"), &out2, append(common, "-node", "h2", "-etcd-password-file", pwFile)...)
	l2 := d2.waitReady(t)
	if err := h1.PingWithin(ctx, l2.Subnet.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := h2.PingWithin(ctx, l1.Subnet.Addr(), 10*time.Second); err != nil {
		t.Fatal(err)
	}
	for _, d := range []*daemon{d1, d2} {
		if err := d.Stop(syscall.SIGTERM); err != nil {
			t.Errorf("%s: %v", d.NS.Name, err)
		}
	}
	for name, out := range map[string]*syncBuffer{"h1": &out1, "h2": &out2, "h2 with the wrong password": &outWrong} {
		for _, secret := range []string{password, wrong, "PRIVATE KEY"} {
			if strings.Contains(out.String(), secret) {
				t.Errorf("the output of %s carries a secret (%q)", name, secret)
			}
		}
	}
}

// syncBuffer is a bytes.Buffer that a process's output goroutine writes
// while the test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
