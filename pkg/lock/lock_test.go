package lock

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/cnierr"
)

func TestExclusive(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	var inside, most int32
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l, err := AcquireIn(dir, "x", 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			n := atomic.AddInt32(&inside, 1)
			for {
				m := atomic.LoadInt32(&most)
				if n <= m || atomic.CompareAndSwapInt32(&most, m, n) {
					break
				}
			}
			time.Sleep(2 * time.Millisecond)
			atomic.AddInt32(&inside, -1)
			l.Unlock()
		}()
	}
	wg.Wait()
	if most != 1 {
		t.Fatalf("%d holders at once", most)
	}
}

func TestTimeoutAndNames(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	l, err := AcquireIn(dir, "y", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if _, err := AcquireIn(dir, "y", 20*time.Millisecond); !errors.Is(err, ErrTimeout) {
		t.Fatalf("second Acquire = %v, want ErrTimeout", err)
	}
	for _, bad := range []string{"", "..", "a/b", "../x"} {
		if _, err := AcquireIn(dir, bad, time.Millisecond); err == nil {
			t.Errorf("Acquire(%q) accepted", bad)
		}
	}
}

// A lock not taken in time is CNI code 11, "try again later", and still
// ErrTimeout.
func TestTimeoutIsTryAgain(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	held, err := AcquireIn(dir, "x", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	_, err = AcquireIn(dir, "x", 20*time.Millisecond)
	if !errors.Is(err, ErrTimeout) || cnierr.Code(err) != 11 {
		t.Fatalf("err = %v (code %d), want ErrTimeout with code 11", err, cnierr.Code(err))
	}
}
