// Package undo is the one mechanism berth uses to roll back a failed ADD:
// each step that changes something pushes its inverse; on failure the
// inverses run in reverse order. It is pure.
package undo

import (
	"errors"
	"fmt"
)

// Stack holds inverse steps. The zero value is ready to use.
type Stack struct {
	steps []step
}

type step struct {
	name string
	fn   func() error
}

// Push records the inverse of a step that has just succeeded.
func (s *Stack) Push(name string, fn func() error) {
	s.steps = append(s.steps, step{name, fn})
}

// Rollback runs every inverse, newest first, and joins their errors so none
// is dropped. The stack is empty afterwards.
func (s *Stack) Rollback() error {
	var errs []error
	for i := len(s.steps) - 1; i >= 0; i-- {
		if err := s.steps[i].fn(); err != nil {
			errs = append(errs, fmt.Errorf("undo %s: %w", s.steps[i].name, err))
		}
	}
	s.steps = nil
	return errors.Join(errs...)
}

// OnError is meant for a defer in a function with a named error result: if
// *errp is set it rolls back and joins rollback failures onto *errp.
func (s *Stack) OnError(errp *error) {
	if *errp == nil {
		s.steps = nil
		return
	}
	if rerr := s.Rollback(); rerr != nil {
		*errp = fmt.Errorf("%w (and the rollback failed: %v)", *errp, rerr)
	}
}
