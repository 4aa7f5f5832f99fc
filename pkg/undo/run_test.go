package undo

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
)

// journal records what steps and inverses ran, in order.
type journal struct {
	mu    sync.Mutex
	lines []string
}

func (j *journal) add(s string) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.lines = append(j.lines, s)
}

func (j *journal) String() string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return strings.Join(j.lines, "\n")
}

// step does name and records its inverse; with fail it fails after doing
// part of its work, and records that part's inverse first.
func (j *journal) step(name string, fail bool) Step {
	return func(_ context.Context, u *Undo) error {
		j.add("do " + name)
		u.Push(name, func() error { j.add("undo " + name); return nil })
		if fail {
			return errors.New(name + " failed")
		}
		return nil
	}
}

func TestRunRollsBackInReverse(t *testing.T) {
	t.Parallel()
	var j journal
	err := func() (err error) {
		run := NewRun(context.Background())
		defer run.Finish(&err)
		run.Do("a", j.step("a", false))
		run.Do("b", j.step("b", true))
		run.Do("c", j.step("c", false)) // skipped: b failed
		return run.Err()
	}()
	if err == nil || err.Error() != "b failed" {
		t.Fatalf("err = %v, want b's", err)
	}
	if want := "do a\ndo b\nundo b\nundo a"; j.String() != want {
		t.Errorf("journal:\n%s\nwant:\n%s", &j, want)
	}
}

func TestRunSuccessUndoesNothing(t *testing.T) {
	t.Parallel()
	var j journal
	err := func() (err error) {
		run := NewRun(context.Background())
		defer run.Finish(&err)
		run.Do("a", j.step("a", false))
		task := run.Start("bg", j.step("bg", false))
		run.Wait(task)
		return run.Err()
	}()
	if err != nil || strings.Contains(j.String(), "undo") {
		t.Fatalf("err %v, journal:\n%s", err, &j)
	}
}

// A background step's inverse is undone where the step was started, after
// the inverses of the steps that followed it, and only once it returned.
func TestRunTaskUndoneInPlace(t *testing.T) {
	t.Parallel()
	var j journal
	release := make(chan struct{})
	err := func() (err error) {
		run := NewRun(context.Background())
		defer run.Finish(&err)
		run.Do("a", j.step("a", false))
		run.Start("bg", func(ctx context.Context, u *Undo) error {
			<-release
			j.add("do bg")
			u.Push("bg", func() error { j.add("undo bg"); return nil })
			return nil
		})
		run.Do("c", j.step("c", false))
		run.Do("d", j.step("d", true))
		close(release) // bg ends while the rollback waits for it
		return run.Err()
	}()
	if err == nil {
		t.Fatal("no error")
	}
	// The rollback undoes d and c while bg may still run, and waits for
	// bg once it reaches bg's place.
	var undos []string
	bgDone := -1
	for i, l := range strings.Split(j.String(), "\n") {
		if strings.HasPrefix(l, "undo ") {
			undos = append(undos, l)
		}
		if l == "do bg" {
			bgDone = i
		}
		if l == "undo bg" && (bgDone < 0 || bgDone > i) {
			t.Errorf("bg undone before it returned:\n%s", &j)
		}
	}
	if got, want := strings.Join(undos, ","), "undo d,undo c,undo bg,undo a"; got != want {
		t.Errorf("undos %s, want %s; journal:\n%s", got, want, &j)
	}
}

// A failed background step fails the run where it is waited for; the
// steps between run, and its partial work is undone too.
func TestRunTaskFailure(t *testing.T) {
	t.Parallel()
	var j journal
	err := func() (err error) {
		run := NewRun(context.Background())
		defer run.Finish(&err)
		task := run.Start("bg", j.step("bg", true))
		<-task.f.done
		run.Do("between", j.step("between", false))
		run.Wait(task)
		run.Do("after", j.step("after", false))
		return run.Err()
	}()
	if err == nil || err.Error() != "bg failed" {
		t.Fatalf("err = %v", err)
	}
	if want := "do bg\ndo between\nundo between\nundo bg"; j.String() != want {
		t.Errorf("journal:\n%s\nwant:\n%s", &j, want)
	}
}

// The run's context ends at the first failure, so a background step that
// waits for something the run will never give stops waiting.
func TestRunCancelsOnFailure(t *testing.T) {
	t.Parallel()
	var stopped error
	err := func() (err error) {
		run := NewRun(context.Background())
		defer run.Finish(&err)
		run.Start("waiter", func(ctx context.Context, u *Undo) error {
			<-ctx.Done()
			stopped = ctx.Err()
			return nil
		})
		run.Do("fails", func(context.Context, *Undo) error { return errors.New("boom") })
		return run.Err()
	}()
	if err == nil || !errors.Is(stopped, context.Canceled) {
		t.Fatalf("err %v, waiter saw %v", err, stopped)
	}
}

// UndoFailed lets an inverse keep what a failed later inverse depends on,
// and a failed inverse is joined onto the error.
func TestRunUndoFailed(t *testing.T) {
	t.Parallel()
	var j journal
	var run *Run
	err := func() (err error) {
		run = NewRun(context.Background())
		defer run.Finish(&err)
		run.Do("record", func(_ context.Context, u *Undo) error {
			u.Push("record", func() error {
				if run.UndoFailed("lease") {
					j.add("keep record")
					return nil
				}
				j.add("undo record")
				return nil
			})
			return nil
		})
		run.Do("lease", func(_ context.Context, u *Undo) error {
			u.Push("lease", func() error { return errors.New("store locked") })
			return nil
		})
		run.Do("veth", j.step("veth", true))
		return run.Err()
	}()
	if err == nil || !strings.Contains(err.Error(), "undo lease: store locked") || !strings.HasPrefix(err.Error(), "veth failed") {
		t.Fatalf("err = %v", err)
	}
	if want := "do veth\nundo veth\nkeep record"; j.String() != want {
		t.Errorf("journal:\n%s\nwant:\n%s", &j, want)
	}
}

func TestAll(t *testing.T) {
	t.Parallel()
	var j journal
	started := make(chan struct{}, 3)
	gate := make(chan struct{})
	step := func(name string, err error) NamedStep {
		return NamedStep{Name: name, Fn: func(context.Context) error {
			started <- struct{}{}
			<-gate // every step must be running at once to pass this
			j.add(name)
			return err
		}}
	}
	go func() {
		for range 3 {
			<-started
		}
		close(gate)
	}()
	err := All(context.Background(), step("a", nil), step("b", errors.New("b: gone")), step("c", errors.New("c: busy")))
	if err == nil || !strings.Contains(err.Error(), "b: gone") || !strings.Contains(err.Error(), "c: busy") {
		t.Fatalf("err = %v, want both errors", err)
	}
	if n := len(strings.Split(j.String(), "\n")); n != 3 {
		t.Errorf("%d steps ran, want 3", n)
	}
}
