package main

import (
	"slices"
	"testing"
)

func TestSplitEnv(t *testing.T) {
	for _, tc := range []struct {
		args      []string
		env, argv []string
	}{
		{[]string{"cnitool", "add"}, []string{}, []string{"cnitool", "add"}},
		{[]string{"A=1", "B=x=y", "cnitool", "C=2"}, []string{"A=1", "B=x=y"}, []string{"cnitool", "C=2"}},
		{[]string{"A=", "=x", "y"}, []string{"A="}, []string{"=x", "y"}},
		{[]string{"A=1"}, []string{"A=1"}, []string{}},
		{nil, []string{}, []string{}},
	} {
		env, argv := splitEnv(tc.args)
		if !slices.Equal(env, tc.env) || !slices.Equal(argv, tc.argv) {
			t.Errorf("splitEnv(%q) = %q, %q; want %q, %q", tc.args, env, argv, tc.env, tc.argv)
		}
	}
}
