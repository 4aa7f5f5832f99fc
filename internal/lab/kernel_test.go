package lab

import (
	"context"
	"testing"
)

// Every feature's probe runs and tells: present, or missing with the
// kernel's answer. Inside the VM layer each must be present (the VM's
// kernel has them all and its init loads their modules); on a machine that
// lacks some, the test skips naming them.
func TestKernelFeatures(t *testing.T) {
	RequireKernel(t, KernelFeatures...)
	for _, f := range KernelFeatures {
		present, why, err := HasKernelFeature(context.Background(), f)
		if err != nil || !present {
			t.Errorf("%v: present %v (%s, %v) after RequireKernel passed", f, present, why, err)
		}
	}
}

// The probes answer on any kernel (a probe that cannot tell is a
// failure), and are cached: a second ask returns the first answer without
// a namespace.
func TestKernelProbesTell(t *testing.T) {
	RequireRoot(t)
	for _, f := range KernelFeatures {
		present, why, err := HasKernelFeature(context.Background(), f)
		if err != nil {
			t.Errorf("%v: %v", f, err)
			continue
		}
		if !present && why == "" {
			t.Errorf("%v: missing, with no word from the kernel", f)
		}
		t.Logf("%v: present %v %s", f, present, why)
	}
	if left, err := ListNetns("bkprobe-"); err != nil || len(left) > 0 {
		t.Errorf("probe namespaces left: %v (%v)", left, err)
	}
	probeMu.Lock()
	runs := probeRuns
	probeMu.Unlock()
	for _, f := range KernelFeatures {
		if _, _, err := HasKernelFeature(context.Background(), f); err != nil {
			t.Errorf("%v asked again: %v", f, err)
		}
	}
	probeMu.Lock()
	defer probeMu.Unlock()
	if probeRuns != runs {
		t.Errorf("asking again ran %d probes, want none (cached)", probeRuns-runs)
	}
}

func TestKernelFeatureNames(t *testing.T) {
	for _, f := range KernelFeatures {
		if _, ok := kernelFeatureNames[f]; !ok {
			t.Errorf("feature %d has no name", int(f))
		}
		if _, ok := kernelProbes[f]; !ok {
			t.Errorf("%v has no probe", f)
		}
	}
}
