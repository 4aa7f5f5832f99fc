// Package lock serialises changes to host state shared between containers
// (a bridge, nftables tables, attachment records) with flock(2) on files
// under /run/berth/lock.
package lock

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// Dir holds the lock files of shared host state.
const Dir = "/run/berth/lock"

// ErrTimeout is returned (wrapped, with CNI code 11, "try again later")
// when a lock could not be taken in time.
var ErrTimeout = errors.New("timed out waiting for lock")

// Wait is how long a command waits for a lock on shared state before it
// gives up and answers CNI code 11, "try again later": long enough for the
// other holders' work (a DEL, a GC sweep) on a busy host, short enough that
// the runtime's own timeout does not fire first.
const Wait = 30 * time.Second

// Lock is a held exclusive lock. Release it with Unlock.
type Lock struct {
	f *os.File
}

// Acquire takes the exclusive lock named name (a file in Dir), waiting at
// most timeout. The name must be a plain file name.
//
// Equivalent: flock -w $timeout /run/berth/lock/$name
func Acquire(name string, timeout time.Duration) (*Lock, error) {
	return AcquireIn(Dir, name, timeout)
}

// AcquireIn is Acquire with the lock file in dir, created if missing.
func AcquireIn(dir, name string, timeout time.Duration) (*Lock, error) {
	if name == "" || name != filepath.Base(name) || name == "." || name == ".." {
		return nil, fmt.Errorf("lock name %q is not a plain file name", name)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create lock dir %s: %w", dir, err)
	}
	return AcquireFile(filepath.Join(dir, name), timeout)
}

// AcquireFile is Acquire on a lock file at path, for state that lives in a
// directory of its own (its lock goes with it). The directory must exist.
func AcquireFile(path string, timeout time.Duration) (*Lock, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open lock %s: %w", path, err)
	}
	deadline := time.Now().Add(timeout)
	delay := time.Millisecond
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return &Lock{f: f}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			f.Close()
			return nil, fmt.Errorf("flock %s: %w", path, err)
		}
		if time.Now().After(deadline) {
			f.Close()
			return nil, fmt.Errorf("lock %s after %s: %w", path, timeout, cnierr.WithCode(types.ErrTryAgainLater, ErrTimeout))
		}
		time.Sleep(delay)
		if delay < 5*time.Millisecond {
			delay *= 2
		}
	}
}

// Unlock releases the lock. Closing the descriptor drops the flock; the file
// stays so that waiters keep contending on the same inode.
func (l *Lock) Unlock() error {
	if l == nil || l.f == nil {
		return nil
	}
	err := l.f.Close()
	l.f = nil
	return err
}
