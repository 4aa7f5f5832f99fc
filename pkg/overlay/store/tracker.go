package store

import (
	"context"
	"sync"
)

// tracker counts the goroutines a Store starts (renewers, watchers) so
// that Close can stop and wait for them, and refuses new ones once Close
// has begun.
type tracker struct {
	ctx    context.Context // cancelled by stop
	cancel context.CancelFunc

	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
}

func newTracker() *tracker {
	ctx, cancel := context.WithCancel(context.Background())
	return &tracker{ctx: ctx, cancel: cancel}
}

// add counts one goroutine about to start; false once stop was called.
func (t *tracker) add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.wg.Add(1)
	return true
}

func (t *tracker) done() { t.wg.Done() }

// stop cancels ctx and waits for every counted goroutine. between runs
// after the cancellation and before the wait (the etcd client's Close,
// which ends keep-alive channels). Calling stop twice is not an error.
func (t *tracker) stop(between func()) {
	t.mu.Lock()
	first := !t.stopped
	t.stopped = true
	t.mu.Unlock()
	t.cancel()
	if first && between != nil {
		between()
	}
	t.wg.Wait()
}
