package file

import (
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

func newPollStore(t testing.TB, dir string) store.Store {
	t.Helper()
	s, err := NewWithOptions(dir, Options{Poll: true})
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

// The contract on the poll path, which shared file systems take.
func TestFilePollContract(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	storetest.Run(t, time.Second, func(t *testing.T) store.Store { return newPollStore(t, dir) })
}

// modes are the two ways a Watch follows the directory, for the tests
// that run on both.
var modes = []struct {
	name     string
	newStore func(testing.TB, string) store.Store
}{
	{"inotify", func(t testing.TB, dir string) store.Store { return newFileStore(t, dir) }},
	{"poll", newPollStore},
}

// waitCount waits until n() reaches want.
func waitCount(t *testing.T, what string, n func() int64, want int64) {
	t.Helper()
	deadline := time.Now().Add(storetest.Timeout)
	for n() < want {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d; want %d", what, n(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// A directory on a local file system is followed by inotify, unless
// Options.Poll says to poll.
func TestFileWatchModes(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	n := storetest.Ensure(t, newFileStore(t, dir), storetest.Network(t))
	kind, shared := sharedFS(filepath.Join(dir, n.Name, "leases"))
	t.Logf("%s: shared file system %v (%s)", dir, shared, kind)
	for _, m := range modes {
		s := m.newStore(t, dir)
		storetest.StartWatch(t, s, n.Name)
		st := &s.(*fileStore).stats
		inotify := m.name == "inotify" && !shared
		if inotify {
			waitCount(t, m.name, st.inotifies.Load, 1)
		} else {
			waitCount(t, m.name, st.polls.Load, 1)
		}
		if st.inotifies.Load()+st.polls.Load() != 1 {
			t.Errorf("%s: %d inotify watches, %d polls; want one watch", m.name, st.inotifies.Load(), st.polls.Load())
		}
	}
}

// On inotify a watcher lists the directory once, for its snapshot, and
// then reads only the files events name, however many leases there are.
func TestFileWatchNoRelist(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx := storetest.Ctx(t)
	writer := newFileStore(t, dir)
	n := storetest.Ensure(t, writer, storetest.Network(t))
	var holds []store.Hold
	for i := 1; i <= 5; i++ {
		holds = append(holds, storetest.Acquire(t, writer, n.Name, storetest.Host(i), time.Minute))
	}
	ws := newFileStore(t, dir)
	w, _ := storetest.StartWatch(t, ws, n.Name)
	const writes = 20
	for i := range writes {
		l, err := holds[i%len(holds)].Update(ctx, func(a store.Attrs) (store.Attrs, error) {
			return a.With("n", store.Attr{Version: 1, Data: []byte(strconv.Itoa(i))})
		})
		if err != nil {
			t.Fatal(err)
		}
		w.Put("an update", l)
	}
	st := &ws.(*fileStore).stats
	t.Logf("%d writes: %d listings, %d lease files read", writes, st.scans.Load(), st.reads.Load())
	if st.scans.Load() != 1 || st.reads.Load() > 2*writes {
		t.Fatalf("%d writes: %d listings of the directory, %d lease files read; want 1 listing and a file or two per write",
			writes, st.scans.Load(), st.reads.Load())
	}
}

// Changes the watcher cannot place in the order of revisions end in a
// new snapshot: a lease file removed by hand (no tombstone says when),
// one written by a berth that predates revisions.
func TestFileWatchGaps(t *testing.T) {
	t.Parallel()
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			s := m.newStore(t, dir)
			n := storetest.Ensure(t, s, storetest.Network(t))
			h1 := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
			h2 := storetest.Acquire(t, s, n.Name, storetest.Host(2), time.Minute)
			w, _ := storetest.StartWatch(t, m.newStore(t, dir), n.Name)

			if err := os.Remove(filepath.Join(dir, n.Name, "leases", store.SubnetKey(h1.Lease().Subnet, '_')+".json")); err != nil {
				t.Fatal(err)
			}
			if ev := w.Next("a file removed by hand"); !ev.Reset || !slices.Equal(ev.Leases, []store.Lease{h2.Lease()}) {
				t.Fatalf("event %+v; want a snapshot of host2's lease", ev)
			}

			old := fmt.Sprintf(`{"subnet":"10.244.5.0/24","host":"old","vtep":"192.0.2.50","mac":"02:00:00:00:00:50","holder":"ab","expires":%d}`,
				time.Now().Add(time.Minute).UnixMilli())
			if err := os.WriteFile(filepath.Join(dir, n.Name, "leases", "10.244.5.0_24.json"), []byte(old), 0o644); err != nil {
				t.Fatal(err)
			}
			ev := w.Next("a file written without a revision")
			if !ev.Reset || len(ev.Leases) != 2 || ev.Leases[1].Host != "old" || ev.Leases[1].Rev != 0 {
				t.Fatalf("event %+v; want a snapshot of host2's lease and the old one, at revision 0", ev)
			}
			// The next write takes a revision after every one so far.
			h3 := storetest.Acquire(t, s, n.Name, storetest.Host(3), time.Minute)
			w.Put("a lease after the gaps", h3.Lease())
		})
	}
}

// Events the kernel dropped (its queue overflowed while the watcher was
// not reading, held by a reader that did not read) are a gap: a new
// snapshot.
func TestFileWatchOverflow(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile("/proc/sys/fs/inotify/max_queued_events")
	if err != nil {
		t.Fatal(err)
	}
	queue, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	s := newFileStore(t, dir)
	n := storetest.Ensure(t, s, storetest.Network(t))
	ws := newFileStore(t, dir)
	w, _ := storetest.StartWatch(t, ws, n.Name)
	h1 := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	// Once the watcher has read host1's file it waits for the test to
	// take the event; two events per rename of a temp-like file fill its
	// queue meanwhile.
	waitCount(t, "lease files read", ws.(*fileStore).stats.reads.Load, 1)
	leases := filepath.Join(dir, n.Name, "leases")
	a, c := filepath.Join(leases, ".flood-a"), filepath.Join(leases, ".flood-b")
	if err := os.WriteFile(a, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for range queue/2 + 100 {
		if err := os.Rename(a, c); err != nil {
			t.Fatal(err)
		}
		a, c = c, a
	}
	h2 := storetest.Acquire(t, s, n.Name, storetest.Host(2), time.Minute)
	want := []store.Lease{h1.Lease(), h2.Lease()}
	for {
		ev := w.Next("the snapshot after the overflow")
		if ev.Reset {
			if !slices.Equal(ev.Leases, want) {
				t.Fatalf("snapshot after the overflow %+v; want %+v", ev, want)
			}
			// The snapshot came from a new watch, as after a gap.
			waitCount(t, "inotify watches", ws.(*fileStore).stats.inotifies.Load, 2)
			return
		}
		if ev.Lease != h1.Lease() {
			t.Fatalf("event %+v before the snapshot; want none but host1's", ev)
		}
	}
}

func inotifyEvent(wd int32, mask uint32, name string) []byte {
	n := (len(name) + 16) &^ 15 // the kernel pads names with NULs
	if name == "" {
		n = 0
	}
	b := make([]byte, unix.SizeofInotifyEvent+n)
	binary.NativeEndian.PutUint32(b[0:], uint32(wd))
	binary.NativeEndian.PutUint32(b[4:], mask)
	binary.NativeEndian.PutUint32(b[12:], uint32(n))
	copy(b[unix.SizeofInotifyEvent:], name)
	return b
}

func TestParseInotify(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		in    []byte
		names []inotifyName
		lost  bool
		err   bool
	}{
		{"none", nil, nil, false, false},
		{"renamed in and deleted", slices.Concat(inotifyEvent(1, unix.IN_MOVED_TO, "10.244.0.0_24.json"), inotifyEvent(1, unix.IN_DELETE, ".tmp-1")),
			[]inotifyName{{1, "10.244.0.0_24.json"}, {1, ".tmp-1"}}, false, false},
		{"two directories", slices.Concat(inotifyEvent(1, unix.IN_MOVED_TO, "10.244.0.0_24.json"), inotifyEvent(2, unix.IN_MOVED_TO, "shared.json"), inotifyEvent(2, unix.IN_CLOSE_WRITE, "lock")),
			[]inotifyName{{1, "10.244.0.0_24.json"}, {2, "shared.json"}, {2, "lock"}}, false, false},
		{"overflow", slices.Concat(inotifyEvent(1, unix.IN_MOVED_TO, "a.json"), inotifyEvent(-1, unix.IN_Q_OVERFLOW, "")), []inotifyName{{1, "a.json"}}, true, false},
		{"directory removed", slices.Concat(inotifyEvent(2, unix.IN_DELETE_SELF, ""), inotifyEvent(2, unix.IN_IGNORED, "")), nil, true, false},
		{"short header", inotifyEvent(1, unix.IN_MOVED_TO, "a.json")[:10], nil, false, true},
		{"short name", inotifyEvent(1, unix.IN_MOVED_TO, "a.json")[:20], nil, false, true},
	} {
		names, lost, err := parseInotify(tc.in)
		if !slices.Equal(names, tc.names) || lost != tc.lost || (err != nil) != tc.err {
			t.Errorf("%s: %v, lost %v, err %v; want %v, lost %v, err %v", tc.name, names, lost, err, tc.names, tc.lost, tc.err)
		}
	}
}

func TestSharedFSType(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		magic  uint32
		kind   string
		shared bool
	}{
		{unix.NFS_SUPER_MAGIC, "nfs", true},
		{unix.CIFS_SUPER_MAGIC, "cifs", true},
		{unix.SMB2_SUPER_MAGIC, "smb2", true},
		{unix.FUSE_SUPER_MAGIC, "fuse", true},
		{unix.V9FS_MAGIC, "9p", true},
		{unix.EXT4_SUPER_MAGIC, "", false},
		{unix.TMPFS_MAGIC, "", false},
		{unix.OVERLAYFS_SUPER_MAGIC, "", false}, // a container's root: writes pass through this kernel
	} {
		if kind, shared := sharedFSType(tc.magic); kind != tc.kind || shared != tc.shared {
			t.Errorf("f_type %#x: %q, %v; want %q, %v", tc.magic, kind, shared, tc.kind, tc.shared)
		}
	}
}

func BenchmarkWatchLatency(b *testing.B) {
	for _, m := range modes {
		b.Run(m.name, func(b *testing.B) {
			dir := b.TempDir()
			storetest.BenchWatchLatency(b, m.newStore(b, dir), m.newStore(b, dir), filePoll)
		})
	}
}
