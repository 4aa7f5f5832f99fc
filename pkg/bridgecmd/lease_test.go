package bridgecmd

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
)

// leaseConf is a host-local config whose leases go under dir.
func leaseConf(dir string) []byte {
	return []byte(`{"cniVersion":"1.0.0","name":"lnet","type":"bridge","ipam":{"type":"host-local",
		"subnet":"10.57.0.0/29","dataDir":"` + dir + `"}}`)
}

// leases lists the lease files host-local keeps under dir.
func leases(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "lnet", "10.57.0.*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestPendingLease(t *testing.T) {
	t.Setenv("CNI_CONTAINERID", "c1")
	t.Setenv("CNI_IFNAME", "eth0")
	t.Setenv("CNI_ARGS", "")
	ctx := context.Background()

	t.Run("abort leases nothing", func(t *testing.T) {
		dir := t.TempDir()
		l := prepareLease(ctx, "host-local", leaseConf(dir))
		l.abort()
		l.begin(true) // too late: no effect
		if _, err := l.result(); !errors.Is(err, errNoLease) {
			t.Errorf("result after abort = %v, want errNoLease", err)
		}
		if got := leases(t, dir); len(got) != 0 {
			t.Errorf("leases after abort: %v", got)
		}
	})
	t.Run("begin leases", func(t *testing.T) {
		dir := t.TempDir()
		l := prepareLease(ctx, "host-local", leaseConf(dir))
		if got := leases(t, dir); len(got) != 0 {
			t.Errorf("leases before begin: %v", got)
		}
		l.begin(true)
		l.abort() // after begin: no effect
		res, err := l.result()
		if err != nil || len(res.IPs) != 1 || res.IPs[0].Address.String() != "10.57.0.2/29" {
			t.Fatalf("result = %+v, %v; want one lease 10.57.0.2/29", res, err)
		}
		if got := leases(t, dir); len(got) != 1 {
			t.Errorf("lease files %v, want one", got)
		}
	})
}
