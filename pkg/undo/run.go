package undo

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/berth-cni/berth/pkg/trace"
)

// Run executes a command's steps in order and owns their undo: each step
// records the inverses of what it changed; the first failure stops the
// run (later steps are skipped), and Finish rolls back what was done,
// newest first. A step may run in the background (Start) while later
// steps run: its inverses take its place on the stack, and the rollback
// waits for it. This is the one place a command overlaps its steps.
//
//	run := undo.NewRun(ctx)
//	defer run.Finish(&err)
//	run.Do("record", a.record)
//	masq := run.Start("masquerade", a.masquerade)
//	run.Do("container", a.configure)
//	run.Wait(masq)
//	return run.Err()
type Run struct {
	ctx    context.Context // cancelled when the run fails or finishes
	cancel context.CancelFunc

	mu     sync.Mutex
	err    error    // the first step error
	frames []*frame // one per step that ran or started, in order
	failed map[string]bool
}

// A Step does one thing, records how to undo it in u, and may return an
// error. It records an inverse also for the part it did before it failed,
// so the rollback undoes that part too. ctx ends when the run fails (a
// background step stops waiting then) or finishes.
type Step func(ctx context.Context, u *Undo) error

// Undo collects the inverses of what one step changed.
type Undo struct {
	steps []step
}

// Push records the inverse of a change the step has just made.
func (u *Undo) Push(name string, fn func() error) {
	u.steps = append(u.steps, step{name, fn})
}

type frame struct {
	name string
	undo Undo
	done chan struct{} // closed when the step returned; nil for Do's
	err  error         // the step's result, once done
}

// Task is a step started in the background.
type Task struct{ f *frame }

// NewRun starts a run whose steps see ctx.
func NewRun(ctx context.Context) *Run {
	ctx, cancel := context.WithCancel(ctx)
	return &Run{ctx: ctx, cancel: cancel, failed: map[string]bool{}}
}

// Err is the first error of a step, or nil.
func (r *Run) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *Run) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
		r.cancel()
	}
}

// Do runs step now, unless an earlier step failed.
func (r *Run) Do(name string, s Step) {
	if r.Err() != nil {
		return
	}
	f := &frame{name: name}
	r.frames = append(r.frames, f)
	if err := s(r.ctx, &f.undo); err != nil {
		r.fail(err)
		return
	}
	trace.Step(name)
}

// Start runs step in a goroutine, unless an earlier step failed, and
// returns it for Wait. Its inverses are undone where it was started: after
// those of the steps that follow it.
func (r *Run) Start(name string, s Step) *Task {
	f := &frame{name: name, done: make(chan struct{})}
	if r.Err() != nil {
		f.err = errors.New("not started: an earlier step failed")
		close(f.done)
		return &Task{f}
	}
	r.frames = append(r.frames, f)
	go func() {
		defer close(f.done)
		f.err = s(r.ctx, &f.undo)
	}()
	return &Task{f}
}

// Wait waits for t and fails the run with its error, as if it were a step
// run here.
func (r *Run) Wait(t *Task) {
	<-t.f.done
	if t.f.err != nil {
		r.fail(t.f.err)
		return
	}
	if r.Err() == nil {
		trace.Step(t.f.name)
	}
}

// Result waits for t and returns its error without failing the run.
func (t *Task) Result() error {
	<-t.f.done
	return t.f.err
}

// UndoFailed reports whether an inverse recorded under name failed during
// the rollback so far: an inverse that depends on it may then have to keep
// what it would remove (an attachment record whose lease could not be
// freed stays, for DEL and GC to finish).
func (r *Run) UndoFailed(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed[name]
}

// Finish is meant for a defer in a function with a named error result.
// When *errp is set (by a failed step, through Err, or otherwise) it waits
// for every started step and runs every inverse, newest first, joining
// rollback failures onto *errp. Either way it ends the run's context and
// waits for the steps still running.
func (r *Run) Finish(errp *error) {
	r.cancel()
	if *errp == nil {
		for _, f := range r.frames {
			if f.done != nil {
				<-f.done
			}
		}
		return
	}
	var errs []error
	for i := len(r.frames) - 1; i >= 0; i-- {
		f := r.frames[i]
		if f.done != nil {
			<-f.done
		}
		for j := len(f.undo.steps) - 1; j >= 0; j-- {
			s := f.undo.steps[j]
			if err := s.fn(); err != nil {
				r.mu.Lock()
				r.failed[s.name] = true
				r.mu.Unlock()
				errs = append(errs, fmt.Errorf("undo %s: %w", s.name, err))
			}
		}
	}
	if rerr := errors.Join(errs...); rerr != nil {
		*errp = fmt.Errorf("%w (and the rollback failed: %v)", *errp, rerr)
	}
}

// All runs every step at once and waits for all of them: for commands
// whose steps are independent and each wait on something else (a DEL's
// kernel deletions, an IPAM plugin's exec), so the command takes as long
// as the slowest. Every step runs whatever the others return; their
// errors are joined. Nothing is undone.
func All(ctx context.Context, steps ...NamedStep) error {
	errs := make([]error, len(steps))
	var wg sync.WaitGroup
	for i, s := range steps[1:] {
		wg.Go(func() { errs[i+1] = s.Fn(ctx) })
	}
	if len(steps) > 0 {
		errs[0] = steps[0].Fn(ctx) // the first on the caller's goroutine
	}
	wg.Wait()
	return errors.Join(errs...)
}

// NamedStep is one step of All; the name is for the reader (and traces).
type NamedStep struct {
	Name string
	Fn   func(ctx context.Context) error
}
