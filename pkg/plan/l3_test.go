package plan

import (
	"net"
	"net/netip"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func ipc(cidr, gw string) *current.IPConfig {
	ip, n, _ := net.ParseCIDR(cidr)
	n.IP = ip
	c := &current.IPConfig{Address: *n}
	if gw != "" {
		c.Gateway = net.ParseIP(gw)
	}
	return c
}

func TestPlanL3DualStackDefaultGateway(t *testing.T) {
	t.Parallel()
	res := &current.Result{IPs: []*current.IPConfig{ipc("10.88.0.5/16", ""), ipc("fd00:88::5/64", "")}}
	p, err := PlanL3(res, Gateway{IsGW: true, IsDefaultGW: true}, 2)
	if err != nil {
		t.Fatal(err)
	}
	wantGW := []netip.Prefix{netip.MustParsePrefix("10.88.0.1/16"), netip.MustParsePrefix("fd00:88::1/64")}
	if len(p.Gateways) != 2 || p.Gateways[0] != wantGW[0] || p.Gateways[1] != wantGW[1] {
		t.Fatalf("gateways = %v, want %v", p.Gateways, wantGW)
	}
	wantRoutes := []Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), GW: netip.MustParseAddr("10.88.0.1")},
		{Dst: netip.MustParsePrefix("::/0"), GW: netip.MustParseAddr("fd00:88::1")},
	}
	if len(p.Routes) != 2 || p.Routes[0] != wantRoutes[0] || p.Routes[1] != wantRoutes[1] {
		t.Fatalf("routes = %v, want %v", p.Routes, wantRoutes)
	}
	if *res.IPs[0].Interface != 2 || res.IPs[0].Gateway.String() != "10.88.0.1" {
		t.Fatalf("result not completed: %+v", res.IPs[0])
	}
}

func TestPlanL3KeepsIPAMDefaultRoute(t *testing.T) {
	t.Parallel()
	_, dflt, _ := net.ParseCIDR("0.0.0.0/0")
	res := &current.Result{
		IPs:    []*current.IPConfig{ipc("10.1.0.5/24", "10.1.0.254")},
		Routes: []*types.Route{{Dst: *dflt, GW: net.ParseIP("10.1.0.254")}},
	}
	p, err := PlanL3(res, Gateway{IsGW: true, IsDefaultGW: true}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Routes) != 1 {
		t.Fatalf("routes = %v, want IPAM's one default route only", p.Routes)
	}
	if p.Gateways[0] != netip.MustParsePrefix("10.1.0.254/24") {
		t.Fatalf("gateway = %v, want IPAM's 10.1.0.254/24", p.Gateways)
	}
}

func TestPlanL3RouteWithoutGWUsesGateway(t *testing.T) {
	t.Parallel()
	_, dst, _ := net.ParseCIDR("192.168.7.0/24")
	res := &current.Result{IPs: []*current.IPConfig{ipc("10.1.0.5/24", "")}, Routes: []*types.Route{{Dst: *dst}}}
	p, err := PlanL3(res, Gateway{IsGW: true}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Routes) != 1 || p.Routes[0].GW != netip.MustParseAddr("10.1.0.1") {
		t.Fatalf("routes = %v", p.Routes)
	}
}

func TestPlanL3Errors(t *testing.T) {
	t.Parallel()
	if _, err := PlanL3(&current.Result{}, Gateway{}, 2); err == nil {
		t.Fatal("no IPs: want error")
	}
	res := &current.Result{IPs: []*current.IPConfig{ipc("10.1.0.1/24", "10.1.0.1")}}
	if _, err := PlanL3(res, Gateway{IsGW: true}, 2); err == nil {
		t.Fatal("container holding its gateway address: want error")
	}
}

func TestPlanL3NoGateway(t *testing.T) {
	t.Parallel()
	res := &current.Result{IPs: []*current.IPConfig{ipc("10.1.0.5/24", "")}}
	p, err := PlanL3(res, Gateway{}, 2)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Gateways) != 0 || len(p.Routes) != 0 || res.IPs[0].Gateway != nil {
		t.Fatalf("plan = %+v, want no gateway and no route", p)
	}
}
