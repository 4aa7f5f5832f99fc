package file

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

// checkModes fails t for every directory under root (root included) that
// is not 0700 and every file that is not 0600, and returns how many of
// each it saw.
func checkModes(t *testing.T, root string) (dirs, files int) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = fs.ModeDir | 0o700
			dirs++
		} else {
			files++
		}
		if fi.Mode() != want {
			t.Errorf("%s: mode %v; want %v", path, fi.Mode(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs, files
}

// The store's files hold secrets (the shared record: the encrypted
// overlay's key ring): every directory it makes is 0700, every file it
// writes 0600, whatever the umask lets through.
func TestFileModes(t *testing.T) {
	t.Parallel()
	root := filepath.Join(t.TempDir(), "store")
	s := newFileStore(t, root)
	ctx := storetest.Ctx(t)
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), time.Minute)
	if _, err := h.Update(ctx, func(a store.Attrs) (store.Attrs, error) {
		return a.With("ack", store.Attr{Version: 1, Data: []byte(`{}`)})
	}); err != nil {
		t.Fatal(err)
	}
	storetest.UpdateShared(t, s, n.Name, setEpoch(1))
	if err := h.Release(ctx); err != nil { // a tombstone
		t.Fatal(err)
	}
	// A watch of a network not stored yet makes its directories.
	storetest.StartWatch(t, s, "watched-only")
	dirs, files := checkModes(t, root)
	t.Logf("%d directories, %d files", dirs, files)
	for _, p := range []string{"network.json", "lock", "rev", "shared.json", "leases/10.244.1.0_24.json"} {
		if _, err := os.Stat(filepath.Join(root, n.Name, p)); err != nil {
			t.Errorf("the workload wrote no %s: %v", p, err)
		}
	}
}

// A network's directories made 0755 by an older berth lose their group
// and other access at the next EnsureNetwork; the directory given to New
// is the caller's and stays as it is.
func TestFileModesTightened(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	n := storetest.Network(t)
	for _, d := range []string{filepath.Join(root, n.Name), filepath.Join(root, n.Name, "leases")} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil { // whatever the umask
			t.Fatal(err)
		}
	}
	storetest.Ensure(t, newFileStore(t, root), n)
	checkModes(t, filepath.Join(root, n.Name))
	if fi, err := os.Stat(root); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("the store's own directory: %v, %v; want it left 0755", fi.Mode(), err)
	}
}
