package integration

import (
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// null leaves the container with lo only, up, and no route; CHECK passes;
// DEL succeeds (twice).
func TestNull(t *testing.T) {
	t.Parallel()
	e := newEnv(t, "null")
	ctx := testCtx(t, time.Minute)
	conf := e.conf("null.conflist", lab.ConflistOptions{})
	c := e.newContainer(ctx, "n1")
	// The lab brings lo up in every namespace it makes; start from down so
	// the test shows that the plugin brings it up.
	if err := c.ns.LinkDown("lo"); err != nil {
		t.Fatal(err)
	}
	res, err := e.r.Add(ctx, conf.List, c.att)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	r, err := lab.Result100(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Interfaces) != 1 || r.Interfaces[0].Name != "lo" {
		t.Errorf("result interfaces %v, want only lo", r.Interfaces)
	}
	if len(r.Routes) != 0 {
		t.Errorf("result routes %v, want none", r.Routes)
	}
	links, err := c.ns.Links()
	if err != nil {
		t.Fatal(err)
	}
	if len(links) != 1 || links[0].Name != "lo" || !links[0].Up {
		t.Errorf("container links %+v, want lo only, up", links)
	}
	routes, err := c.ns.Routes()
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range routes {
		if rt.Dev != "lo" { // ::1 dev lo is the kernel's own loopback route
			t.Errorf("container has a route out: %+v", rt)
		}
	}
	if vs, err := e.w.Host.Links(); err == nil {
		for _, l := range vs {
			if l.Name != "lo" && l.Name != lab.HostUplinkName {
				t.Errorf("null created host link %s", l.Name)
			}
		}
	}
	if err := e.r.Check(ctx, conf.List, c.att); err != nil {
		t.Errorf("CHECK: %v", err)
	}
	for i := range 2 {
		if err := e.r.Del(ctx, conf.List, c.att); err != nil {
			t.Errorf("DEL %d: %v", i+1, err)
		}
	}
}
