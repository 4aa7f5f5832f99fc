package main

import (
	"context"
	"path/filepath"
	"strings"
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
