package file

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

func newFileStore(t testing.TB, dir string) store.Store {
	t.Helper()
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close file store: %v", err)
		}
	})
	return s
}

func TestFileContract(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	storetest.Run(t, time.Second, func(t *testing.T) store.Store { return newFileStore(t, dir) })
}

func TestFileLayout(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	for _, p := range []string{"network.json", "lock", "leases/10.244.1.0_24.json"} {
		if _, err := os.Stat(filepath.Join(dir, n.Name, p)); err != nil {
			t.Errorf("layout: %v", err)
		}
	}
	b, err := os.ReadFile(filepath.Join(dir, n.Name, "leases/10.244.1.0_24.json"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := decodeFileLease(b, h.Lease().Subnet)
	if err != nil || f.Lease != h.Lease() || f.Holder == "" || f.Revision != h.Lease().Rev {
		t.Fatalf("lease file %s: %+v, %v", b, f, err)
	}
	// A lease without attributes is stored as before they existed, and
	// its revision after them.
	if want := fmt.Sprintf(`{"subnet":"10.244.1.0/24","host":"host1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","holder":%q,"expires":%d,"rev":%d}`, f.Holder, f.Expires, f.Revision); string(b) != want {
		t.Errorf("lease file %s; want %s", b, want)
	}
	if c, err := os.ReadFile(filepath.Join(dir, n.Name, "rev")); err != nil || string(c) != fmt.Sprintf("%d\n", f.Revision) {
		t.Errorf("revision counter %q, %v; want the lease's revision %d", c, err, f.Revision)
	}
	if left := time.Until(time.UnixMilli(f.Expires)); left <= 0 || left > time.Minute {
		t.Errorf("lease file expires in %v; want within the minute of ttl", left)
	}
}

// A lease file that expired while its holder was stopped (SIGSTOP, a
// suspended VM) is swept by the holder's next renewal, which reports the
// Hold lost and leaves the tombstone; one deleted by hand is lost too.
func TestFileLostAtRenewal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	path := func(h store.Hold) string {
		return filepath.Join(dir, n.Name, "leases", store.SubnetKey(h.Lease().Subnet, '_')+".json")
	}

	expired := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Second)
	b, err := os.ReadFile(path(expired))
	if err != nil {
		t.Fatal(err)
	}
	var f fileLease
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	f.Expires = time.Now().Add(-time.Minute).UnixMilli()
	if err := writeLease(filepath.Join(dir, n.Name), f); err != nil {
		t.Fatal(err)
	}
	storetest.WaitClosed(t, expired.Lost(), "Lost of an expired lease")
	if got, ok, err := readLeaseFile(path(expired), expired.Lease().Subnet); err != nil || !ok || !got.tombstone() || got.DeletedRev <= f.Revision {
		t.Errorf("expired lease file after the renewal saw it: %+v, %v, %v; want its tombstone", got, ok, err)
	}

	vanished := storetest.Acquire(t, s, n.Name, storetest.Host(2), time.Second)
	if err := os.Remove(path(vanished)); err != nil {
		t.Fatal(err)
	}
	storetest.WaitClosed(t, vanished.Lost(), "Lost of a deleted lease file")
}

func TestFileCorruptLease(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	bad := filepath.Join(dir, n.Name, "leases", "10.244.5.0_24.json")
	if err := os.WriteFile(bad, []byte(`{"subnet":"10.244.6.0/24"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := s.Leases(storetest.Ctx(t), n.Name)
	if err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("Leases with a corrupt file: err = %v; want one naming %s", err, bad)
	}
	// A temp file of a write in flight is not a lease.
	if err := os.Rename(bad, filepath.Join(dir, n.Name, "leases", ".tmp-123")); err != nil {
		t.Fatal(err)
	}
	if ls := storetest.Leases(t, s, n.Name); len(ls) != 0 {
		t.Fatalf("Leases = %+v; want none", ls)
	}
}

// A lease file as written before attributes existed decodes, with none,
// and keeps none through renewals; one whose attributes are malformed,
// or that is longer than a lease record may be, is corrupt.
func TestFileRecords(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	path := filepath.Join(dir, n.Name, "leases", "10.244.5.0_24.json")
	old := fmt.Sprintf(`{"subnet":"10.244.5.0/24","host":"old","vtep":"192.0.2.50","mac":"02:00:00:00:00:50","holder":"ab","expires":%d}`,
		time.Now().Add(time.Minute).UnixMilli())
	if err := os.WriteFile(path, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	got := storetest.Leases(t, s, n.Name)
	if len(got) != 1 || got[0].Host != "old" || !got[0].Attrs.IsZero() {
		t.Fatalf("Leases of a record without attrs = %+v", got)
	}
	for name, body := range map[string]string{
		"malformed attrs": strings.Replace(old, `"holder"`, `"attrs":{"a":{"version":0,"data":1}},"holder"`, 1),
		"too long":        strings.Replace(old, `"holder":"ab"`, `"holder":"`+strings.Repeat("a", store.MaxRecordSize)+`"`, 1),
	} {
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Leases(storetest.Ctx(t), n.Name); err == nil || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: Leases err = %v; want one naming %s", name, err, path)
		}
	}
}

// Many hosts acquiring at once on one directory get distinct subnets: the
// flock serialises them.
func TestFileConcurrentAcquire(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	n := storetest.Ensure(t, newFileStore(t, dir), storetest.Network(t))
	const hosts = 20
	subnets := make([]string, hosts)
	var wg sync.WaitGroup
	for i := range hosts {
		s := newFileStore(t, dir)
		wg.Go(func() {
			h, err := s.Acquire(storetest.Ctx(t), n.Name, storetest.Host(i+1), time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			subnets[i] = h.Lease().Subnet.String()
		})
	}
	wg.Wait()
	seen := map[string]int{}
	for i, p := range subnets {
		if j, dup := seen[p]; dup {
			t.Errorf("host%d and host%d both got %s", j+1, i+1, p)
		}
		seen[p] = i
	}
	for i := 1; i <= hosts; i++ { // the first subnet is never handed out
		if _, ok := seen[fmt.Sprintf("10.244.%d.0/24", i)]; !ok {
			t.Errorf("10.244.%d.0/24 not leased; want the lowest %d subnets past the first: %v", i, hosts, subnets)
		}
	}
}

// FuzzDecodeFileLease: a lease file never panics the decoder, and what it
// accepts is valid, names the subnet of its file name, has revisions in
// order (a tombstone's deletion after the lease's write) and survives a
// round trip.
func FuzzDecodeFileLease(f *testing.F) {
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","holder":"ab","expires":1}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01"}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","holder":"ab","expires":1,"rev":7}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","holder":"ab","expires":1,"rev":7,"deleted":9}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","holder":"ab","expires":1,"rev":9,"deleted":9}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.0/24","host":"n1","vtep":"192.0.2.1","mac":"02:00:00:00:00:01","holder":"ab","expires":1,"rev":-1}`), "10.244.3.0_24")
	f.Add([]byte(`{"subnet":"10.244.3.5/24","host":"n1"}`), "10.244.3.0-24")
	f.Add([]byte(`null`), "")
	f.Fuzz(func(t *testing.T, b []byte, key string) {
		subnet, err := store.ParseSubnetKey(key, '_')
		if err != nil {
			subnet = netip.MustParsePrefix("10.244.3.0/24")
		}
		fl, err := decodeFileLease(b, subnet)
		if err != nil {
			return
		}
		if verr := fl.Lease.Validate(); verr != nil || fl.Subnet != subnet || fl.Holder == "" || fl.Expires <= 0 ||
			fl.Revision < 0 || fl.Lease.Rev != fl.Revision || fl.tombstone() && fl.DeletedRev <= fl.Revision || fl.DeletedRev < 0 {
			t.Fatalf("accepted lease file %+v: %v", fl, verr)
		}
		again, err := json.Marshal(fl)
		if err != nil {
			t.Fatal(err)
		}
		if fl2, err := decodeFileLease(again, subnet); err != nil || fl2 != fl {
			t.Fatalf("round trip of %+v: %+v, %v", fl, fl2, err)
		}
	})
}

// BenchmarkAcquire: 200 hosts live and 200 gone, and a host that comes
// back asking for nothing (new) or for its subnet (returning).
func BenchmarkAcquire(b *testing.B) {
	for _, ask := range []bool{false, true} {
		b.Run(map[bool]string{false: "new", true: "returning"}[ask], func(b *testing.B) {
			storetest.BenchAcquire(b, newFileStore(b, b.TempDir()), 200, ask)
		})
	}
}
