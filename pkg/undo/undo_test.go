package undo

import (
	"errors"
	"strings"
	"testing"
)

func TestRollbackOrderAndErrors(t *testing.T) {
	t.Parallel()
	var s Stack
	var order []string
	s.Push("a", func() error { order = append(order, "a"); return nil })
	s.Push("b", func() error { order = append(order, "b"); return errors.New("boom") })
	s.Push("c", func() error { order = append(order, "c"); return nil })
	err := s.Rollback()
	if strings.Join(order, "") != "cba" {
		t.Fatalf("order = %v, want c b a", order)
	}
	if err == nil || !strings.Contains(err.Error(), "undo b: boom") {
		t.Fatalf("err = %v", err)
	}
}

func TestOnError(t *testing.T) {
	t.Parallel()
	ran := false
	f := func(fail bool) (err error) {
		var s Stack
		defer s.OnError(&err)
		s.Push("x", func() error { ran = true; return nil })
		if fail {
			return errors.New("step failed")
		}
		return nil
	}
	if err := f(false); err != nil || ran {
		t.Fatalf("success path: err=%v ran=%v", err, ran)
	}
	if err := f(true); err == nil || !ran {
		t.Fatalf("failure path: err=%v ran=%v", err, ran)
	}
}
