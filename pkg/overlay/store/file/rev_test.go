package file

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

// The counter and the tombstones, as the files hold them.
func TestFileRevisions(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := storetest.Ctx(t)
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	d := filepath.Join(dir, n.Name)
	counter := func() int64 {
		t.Helper()
		rev, ok, err := readRev(d)
		if err != nil || !ok {
			t.Fatalf("counter: %d, %v, %v", rev, ok, err)
		}
		return rev
	}
	record := func(l store.Lease) fileLease {
		t.Helper()
		f, ok, err := readLeaseFile(leasePath(d, l.Subnet), l.Subnet)
		if err != nil || !ok {
			t.Fatalf("lease file of %s: %v, %v", l.Subnet, ok, err)
		}
		return f
	}

	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Second)
	if h.Lease().Rev != 1 || counter() != 1 {
		t.Fatalf("first write at revision %d, counter %d; want 1", h.Lease().Rev, counter())
	}
	l, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
		return a.With("x", store.Attr{Version: 1, Data: []byte("1")})
	})
	if err != nil || l.Rev != 2 || counter() != 2 {
		t.Fatalf("update at revision %d (%v), counter %d; want 2", l.Rev, err, counter())
	}
	// Renewals (every ttl/3) rewrite the expiry, not the revision.
	expires := record(l).Expires
	time.Sleep(time.Second)
	if f := record(l); f.Expires <= expires || f.Revision != 2 || counter() != 2 {
		t.Fatalf("after renewals the record is %+v, counter %d; want a later expiry at revision 2", f, counter())
	}
	if err := h.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if f := record(l); !f.tombstone() || f.DeletedRev != 3 || f.Lease != l || counter() != 3 {
		t.Fatalf("after the release the record is %+v, counter %d; want the lease's tombstone at revision 3", f, counter())
	}
	if got := storetest.Leases(t, s, n.Name); len(got) != 0 {
		t.Fatalf("Leases with a tombstone = %+v; want none", got)
	}
	// Another host's claim of the subnet (asked for: PickSubnet keeps it
	// for host1 otherwise) overwrites the tombstone.
	want := storetest.Host(2)
	want.Subnet = l.Subnet
	again := storetest.Acquire(t, s, n.Name, want, time.Minute)
	if again.Lease().Subnet != l.Subnet || again.Lease().Rev != 4 || record(again.Lease()).tombstone() {
		t.Fatalf("the next claim of %s is %+v; want it over the tombstone at revision 4", l.Subnet, again.Lease())
	}

	// A counter removed by hand: the next write starts after the files.
	if err := os.Remove(filepath.Join(d, revFile)); err != nil {
		t.Fatal(err)
	}
	if h3 := storetest.Acquire(t, s, n.Name, storetest.Host(3), time.Minute); h3.Lease().Rev != 5 {
		t.Fatalf("after the counter was removed the next write is at revision %d; want 5", h3.Lease().Rev)
	}
	// A corrupt one fails every write, naming it.
	path := filepath.Join(d, revFile)
	if err := os.WriteFile(path, []byte("five\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Acquire(ctx, n.Name, storetest.Host(4), time.Minute); err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Acquire with a corrupt counter: %v; want an error naming %s", err, path)
	}
}

// A sweep that finds several leases expired buries them in the order
// they expired, not the order of their file names, so that the
// tombstones' revisions say who left first (PickSubnet's "left longest
// ago").
func TestFileSweepOrder(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	d := filepath.Join(dir, n.Name)
	now := time.Now()
	expired := map[string]time.Duration{"10.244.1.0/24": -time.Second, "10.244.2.0/24": -3 * time.Second, "10.244.3.0/24": -2 * time.Second}
	for subnet, ago := range expired {
		l := storetest.Host(1)
		l.Subnet = netip.MustParsePrefix(subnet)
		if err := writeLease(d, fileLease{Lease: l, Holder: "ab", Expires: now.Add(ago).UnixMilli()}); err != nil {
			t.Fatal(err)
		}
	}
	if got := storetest.Leases(t, s, n.Name); len(got) != 0 {
		t.Fatalf("Leases = %+v; want none, all expired", got)
	}
	var order []string
	for rev := int64(1); rev <= 3; rev++ {
		for subnet := range expired {
			p := netip.MustParsePrefix(subnet)
			if f, ok, err := readLeaseFile(leasePath(d, p), p); err != nil || !ok {
				t.Fatalf("lease file of %s: %v, %v", p, ok, err)
			} else if f.DeletedRev == rev {
				order = append(order, subnet)
			}
		}
	}
	if want := []string{"10.244.2.0/24", "10.244.3.0/24", "10.244.1.0/24"}; !slices.Equal(order, want) {
		t.Fatalf("buried in the order %v; want %v, the order they expired", order, want)
	}
}

// FuzzParseRev: the counter file never panics the decoder, and what it
// accepts is what encodeRev writes.
func FuzzParseRev(f *testing.F) {
	for _, s := range []string{"0\n", "1\n", "42\n", "9223372036854775807\n", "9223372036854775808\n", "01\n", "-1\n", "+1\n", "1", "", "\n", "1\n\n", " 1\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		rev, err := parseRev(b)
		if err != nil {
			return
		}
		if rev < 0 || !bytes.Equal(encodeRev(rev), b) {
			t.Fatalf("parseRev(%q) = %d; encodeRev gives %q", b, rev, encodeRev(rev))
		}
	})
}
