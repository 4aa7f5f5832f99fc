// Package tracker is what the store backends share to run goroutines
// (renewers, watchers, pollers): a Tracker that counts them so that a
// store's Close can stop and wait for them. It touches nothing outside
// the process.
package tracker

import (
	"context"
	"sync"
)

// Tracker counts the goroutines a Store starts so that Close can stop and
// wait for them, and refuses new ones once Close has begun.
type Tracker struct {
	ctx    context.Context // cancelled by Stop
	cancel context.CancelFunc

	mu      sync.Mutex
	stopped bool
	wg      sync.WaitGroup
}

// New returns a Tracker whose context lives until Stop.
func New() *Tracker {
	ctx, cancel := context.WithCancel(context.Background())
	return &Tracker{ctx: ctx, cancel: cancel}
}

// Context is cancelled when Stop begins: the store's lifetime.
func (t *Tracker) Context() context.Context { return t.ctx }

// Add counts one goroutine about to start; false once Stop was called.
func (t *Tracker) Add() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return false
	}
	t.wg.Add(1)
	return true
}

// Done marks a goroutine counted by Add as ended.
func (t *Tracker) Done() { t.wg.Done() }

// Stop cancels the context and waits for every counted goroutine. between
// runs after the cancellation and before the wait (the etcd client's
// Close, which ends keep-alive channels), on the first call only. Calling
// Stop twice is not an error.
func (t *Tracker) Stop(between func()) {
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
