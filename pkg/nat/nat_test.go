package nat

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/nat/natplan"
	"github.com/berth-cni/berth/pkg/owner"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// ent builds an entry: ent("c1/eth0", "10.22.0.5/16").
func ent(who, addr string) natplan.Entry {
	id, ifn, _ := strings.Cut(who, "/")
	return natplan.Entry{Owner: owner.Owner{Network: "n", ContainerID: id, IfName: ifn}, Addr: mustPrefix(addr)}
}

func TestValidateMasq(t *testing.T) {
	t.Parallel()
	o := owner.Owner{Network: "n", ContainerID: "c", IfName: "eth0"}
	es, err := validateMasq(Masq{Owner: o, Addrs: []netip.Prefix{mustPrefix("::ffff:10.1.2.3/112")}})
	if err != nil || len(es) != 1 || es[0].Addr != mustPrefix("10.1.2.3/16") {
		t.Errorf("4in6 address: %v, %v", es, err)
	}
	for _, m := range []Masq{
		{Owner: owner.Owner{ContainerID: "c", IfName: "eth0"}},
		{Owner: owner.Owner{Network: "n", IfName: "eth0"}},
		{Owner: owner.Owner{Network: "n", ContainerID: "c"}},
		{Owner: owner.Owner{Network: "n", ContainerID: "c", IfName: "0123456789abcdef"}},
		{Owner: o, Addrs: []netip.Prefix{{}}},
		{Owner: o, Addrs: []netip.Prefix{mustPrefix("10.0.0.1/8"), mustPrefix("10.0.0.1/16")}},
		{Owner: o, Addrs: []netip.Prefix{mustPrefix("::ffff:10.1.2.3/64")}},
	} {
		if _, err := validateMasq(m); err == nil {
			t.Errorf("validateMasq(%+v) = nil, want an error", m)
		}
	}
}

func TestGroup(t *testing.T) {
	t.Parallel()
	got := group("n", []natplan.Entry{ent("b/eth0", "10.0.0.2/8"), ent("a/eth0", "fd00::1/64"), ent("a/eth0", "10.0.0.1/8")})
	want := []Masq{
		{Owner: owner.Owner{Network: "n", ContainerID: "a", IfName: "eth0"}, Addrs: []netip.Prefix{mustPrefix("10.0.0.1/8"), mustPrefix("fd00::1/64")}},
		{Owner: owner.Owner{Network: "n", ContainerID: "b", IfName: "eth0"}, Addrs: []netip.Prefix{mustPrefix("10.0.0.2/8")}},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("group = %v, want %v", got, want)
	}
}
