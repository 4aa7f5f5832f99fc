package portplan

import (
	"strings"
	"testing"
)

// Elements render as nft prints them and are planned once per key, in
// the table's set order.
func TestPlanNFT(t *testing.T) {
	t.Parallel()
	a := testAttachment("c1", "10.88.0.5/16", "fd00:88::5/64",
		mapping("tcp", "", 8080, 80), mapping("tcp", "0.0.0.0", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353), mapping("sctp", "::", 9, 9))
	a.MasqAll = true
	var got []string
	for _, e := range PlanNFT(a) {
		got = append(got, e.String())
	}
	c := ` comment "berth id=c1 if=eth0 net=n1"`
	want := []string{
		`add element inet berth-portmap any4 { tcp . 8080` + c + ` : 10.88.0.5 . 80 }`,
		`add element inet berth-portmap addr4 { 10.0.0.1 . udp . 53` + c + ` : 10.88.0.5 . 5353 }`,
		`add element inet berth-portmap hairpin4 { 10.88.0.0/16 . 10.88.0.5` + c + ` }`,
		`add element inet berth-portmap hairpin4 { 127.0.0.0/8 . 10.88.0.5` + c + ` }`,
		`add element inet berth-portmap masqall4 { 10.88.0.5 . tcp . 80` + c + ` }`,
		`add element inet berth-portmap masqall4 { 10.88.0.5 . udp . 5353` + c + ` }`,
		`add element inet berth-portmap any6 { tcp . 8080` + c + ` : fd00:88::5 . 80 }`,
		`add element inet berth-portmap any6 { sctp . 9` + c + ` : fd00:88::5 . 9 }`,
		`add element inet berth-portmap hairpin6 { fd00:88::/64 . fd00:88::5` + c + ` }`,
		`add element inet berth-portmap masqall6 { fd00:88::5 . tcp . 80` + c + ` }`,
		`add element inet berth-portmap masqall6 { fd00:88::5 . sctp . 9` + c + ` }`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("PlanNFT:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	// No snat: no hairpin; a family with no address: nothing of it.
	a = testAttachment("c1", "10.88.0.5/16", "", mapping("tcp", "", 8080, 80), mapping("tcp", "fd00::1", 8443, 443))
	a.SNAT = false
	if es := PlanNFT(a); len(es) != 1 || es[0].Set() != "any4" {
		t.Errorf("PlanNFT without snat or an IPv6 address = %v, want any4's one element", es)
	}
}
