package natplan

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/owner"
)

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// ent builds an entry: ent("c1/eth0", "10.22.0.5/16").
func ent(who, addr string) Entry {
	id, ifn, _ := strings.Cut(who, "/")
	return Entry{Owner: owner.Owner{Network: "n", ContainerID: id, IfName: ifn}, Addr: mustPrefix(addr)}
}

func ents(es ...Entry) []Entry { return es }

func fmtEntries(es []Entry) string {
	var s []string
	for _, e := range es {
		s = append(s, e.String())
	}
	return "[" + strings.Join(s, " ") + "]"
}

func TestPlanEnsure(t *testing.T) {
	t.Parallel()
	a5 := ent("a/eth0", "10.22.0.5/16")
	a6 := ent("a/eth0", "fd22::5/64")
	b6 := ent("b/eth0", "10.22.0.6/16")
	for _, tc := range []struct {
		name          string
		cur, want     []Entry
		add, del, fin []Entry
	}{
		{name: "fresh", want: ents(a5), add: ents(a5), fin: ents(a5)},
		{name: "again", cur: ents(a5), want: ents(a5), fin: ents(a5)},
		{name: "second owner", cur: ents(a5), want: ents(b6), add: ents(b6), fin: ents(a5, b6)},
		{name: "dual stack", cur: ents(a5), want: ents(a5, a6), add: ents(a6), fin: ents(a5, a6)},
		{name: "drop old address", cur: ents(a5, a6, b6), want: ents(a6), del: ents(a5), fin: ents(a6, b6)},
		{name: "new subnet length", cur: ents(a5), want: ents(ent("a/eth0", "10.22.0.5/24")),
			add: ents(ent("a/eth0", "10.22.0.5/24")), del: ents(a5), fin: ents(ent("a/eth0", "10.22.0.5/24"))},
		{name: "address moves to new owner", cur: ents(ent("old/eth0", "10.22.0.5/16")), want: ents(a5),
			add: ents(a5), del: ents(ent("old/eth0", "10.22.0.5/16")), fin: ents(a5)},
		{name: "other interface of same container", cur: ents(ent("a/net1", "10.23.0.5/16")), want: ents(a5),
			add: ents(a5), fin: ents(a5, ent("a/net1", "10.23.0.5/16"))},
		{name: "duplicate removed", cur: ents(a5, a5), want: ents(a5), del: ents(a5), fin: ents(a5)},
		{name: "empty want deletes", cur: ents(a5, b6), del: ents(a5), fin: ents(b6)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			owner := owner.Owner{Network: "n", ContainerID: "a", IfName: "eth0"}
			if len(tc.want) > 0 {
				owner = tc.want[0].Owner
			}
			c := PlanEnsure(tc.cur, tc.want, owner)
			if !slices.Equal(c.Add, tc.add) || !slices.Equal(c.Del, tc.del) || !slices.Equal(c.Final, tc.fin) {
				t.Errorf("add %s del %s final %s\nwant add %s del %s final %s",
					fmtEntries(c.Add), fmtEntries(c.Del), fmtEntries(c.Final),
					fmtEntries(tc.add), fmtEntries(tc.del), fmtEntries(tc.fin))
			}
		})
	}
}

func TestPlanDelete(t *testing.T) {
	t.Parallel()
	a5, a6, b6 := ent("a/eth0", "10.22.0.5/16"), ent("a/eth0", "fd22::5/64"), ent("b/eth0", "10.22.0.6/16")
	c := PlanDelete(ents(a5, b6, a6), owner.Owner{ContainerID: "a", IfName: "eth0"})
	if !slices.Equal(c.Del, ents(a5, a6)) || !slices.Equal(c.Final, ents(b6)) || len(c.Add) != 0 {
		t.Errorf("delete a: del %s final %s", fmtEntries(c.Del), fmtEntries(c.Final))
	}
	if c := PlanDelete(ents(a5), owner.Owner{ContainerID: "zz", IfName: "eth0"}); !c.empty() {
		t.Errorf("delete of unknown owner changes %s", fmtEntries(c.Del))
	}
}

func TestSubnetsAndRanges(t *testing.T) {
	t.Parallel()
	es := ents(
		ent("a/e", "10.22.0.5/16"), ent("b/e", "10.22.0.6/16"), // same subnet once
		ent("c/e", "10.22.5.1/24"), // inside 10.22/16
		ent("d/e", "10.23.0.1/16"), // adjacent: merges into one range
		ent("e/e", "192.168.1.9/24"),
		ent("f/e", "255.255.255.1/24"), // top of the space
		ent("g/e", "fd00::1/64"),
	)
	subs := fmt.Sprint(Subnets(es, V4))
	if want := "[10.22.0.0/16 10.23.0.0/16 192.168.1.0/24 255.255.255.0/24]"; subs != want {
		t.Errorf("subnets v4 = %s, want %s", subs, want)
	}
	rs := ranges(Subnets(es, V4))
	if got, want := fmt.Sprint(rs), "[{10.22.0.0 10.23.255.255} {192.168.1.0 192.168.1.255} {255.255.255.0 255.255.255.255}]"; got != want {
		t.Errorf("ranges v4 = %s, want %s", got, want)
	}
	elems := RangeElems(rs)
	if len(elems) != 5 { // the top range has no end element
		t.Errorf("rangeElems = %v", elems)
	}
	slices.Reverse(elems) // a dump returns them highest first
	back, err := ElemRanges(elems, 4)
	if err != nil || !slices.Equal(back, rs) {
		t.Errorf("elemRanges(rangeElems(rs)) = %v, %v; want %v", back, err, rs)
	}
	if got := fmt.Sprint(ranges(Subnets(es, V6))); got != "[{fd00:: fd00::ffff:ffff:ffff:ffff}]" {
		t.Errorf("ranges v6 = %s", got)
	}
	// Old nft writes an end element at zero; it matches nothing.
	zero := append([]IntervalElem{{Key: []byte{0, 0, 0, 0}, End: true}}, RangeElems(rs[:1])...)
	if back, err := ElemRanges(zero, 4); err != nil || !slices.Equal(back, rs[:1]) {
		t.Errorf("elemRanges with zero end = %v, %v", back, err)
	}
	for _, bad := range [][]IntervalElem{
		{{Key: []byte{1, 0, 0, 0}}, {Key: []byte{2, 0, 0, 0}}},            // two starts
		{{Key: []byte{1, 0, 0, 0}}, {Key: []byte{1, 0, 0, 0}, End: true}}, // empty range
		{{Key: []byte{1, 0, 0}}},                                          // short key
	} {
		if got, err := ElemRanges(bad, 4); err == nil {
			t.Errorf("elemRanges(%v) = %v, want an error", bad, got)
		}
	}
}
