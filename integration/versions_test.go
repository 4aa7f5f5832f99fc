package integration

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	types040 "github.com/containernetworking/cni/pkg/types/040"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/internal/lab"
)

// The bridge answers in every spec version it claims, and each result
// decodes with the cni library's types for that version and names the
// container's address and interface.
func TestResultVersions(t *testing.T) {
	t.Parallel()
	base := newEnv(t, bridgePlugins...)
	ctx := testCtx(t, 3*time.Minute)
	for _, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			e := base.in(t)
			conf := e.conf("bridge.conflist", lab.ConflistOptions{CNIVersion: v})
			c := e.newContainer(ctx, "v"+v)
			if err := e.add(ctx, conf, c); err != nil {
				t.Fatal(err)
			}
			if got := c.res.Version(); got != v {
				t.Errorf("result version %s, want %s", got, v)
			}
			raw, err := json.Marshal(c.res)
			if err != nil {
				t.Fatal(err)
			}
			var ips []netip.Addr
			var sandboxes []string
			switch v {
			case "0.3.0", "0.3.1", "0.4.0":
				r, err := types040.NewResult(raw)
				if err != nil {
					t.Fatalf("decode as %s: %v\n%s", v, err, raw)
				}
				res := r.(*types040.Result)
				for _, ip := range res.IPs {
					a, _ := netip.AddrFromSlice(ip.Address.IP)
					ips = append(ips, a.Unmap())
				}
				for _, i := range res.Interfaces {
					if i.Name == "eth0" {
						sandboxes = append(sandboxes, i.Sandbox)
					}
				}
			default:
				r, err := types100.NewResult(raw)
				if err != nil {
					t.Fatalf("decode as %s: %v\n%s", v, err, raw)
				}
				res := r.(*types100.Result)
				for _, ip := range res.IPs {
					a, _ := netip.AddrFromSlice(ip.Address.IP)
					ips = append(ips, a.Unmap())
				}
				for _, i := range res.Interfaces {
					if i.Name == "eth0" {
						sandboxes = append(sandboxes, i.Sandbox)
					}
				}
			}
			have := ifaceAddrs(t, c.ns, "eth0")
			if len(ips) != 2 {
				t.Errorf("result has IPs %v, want one per family", ips)
			}
			for _, ip := range ips {
				if !hasAddr(have, ip) {
					t.Errorf("result IP %s is not on eth0 (%v)", ip, have)
				}
			}
			if len(sandboxes) != 1 || sandboxes[0] != c.ns.Path {
				t.Errorf("result interfaces name eth0 in sandboxes %v, want [%s]\n%s", sandboxes, c.ns.Path, raw)
			}
			if v != "0.3.0" && v != "0.3.1" { // CHECK exists from 0.4.0
				if err := e.r.Check(ctx, conf.List, c.att); err != nil {
					t.Errorf("CHECK: %v", err)
				}
			}
			if err := e.r.Del(ctx, conf.List, c.att); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			e.wantGone(ctx, "after DEL", c.att.ContainerID)
		})
	}
}
