package natplan

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/owner"
)

// opsText renders nftOps as the nft commands they stand for, one a line.
func opsText(network string, o NFTOps) string {
	if o.DropTable {
		return "delete table inet berth-nat"
	}
	var b strings.Builder
	if o.AddBase {
		b.WriteString("add table; add chain\n")
	}
	names := NFTNamesFor(network)
	for _, f := range Families {
		fo := o.Fam[f]
		src, dst := names.Src[f][:4], names.Dst[f][:4]
		line := func(cond bool, format string, args ...any) {
			if cond {
				fmt.Fprintf(&b, format+"\n", args...)
			}
		}
		line(fo.AddSrc, "add set %s", src)
		line(fo.AddDst, "add set %s", dst)
		line(len(fo.DelElems) > 0, "delete element %s %s", src, fmtEntries(fo.DelElems))
		line(len(fo.AddElems) > 0, "add element %s %s", src, fmtEntries(fo.AddElems))
		line(fo.WriteDst, "flush set %s; add element %s %v", dst, dst, fo.Dst)
		line(fo.AddRule, "add rule %s", f)
		line(fo.DelRule != 0, "delete rule handle %d", fo.DelRule)
		line(fo.DelSrc, "delete set %s", src)
		line(fo.DelDst, "delete set %s", dst)
	}
	return strings.TrimSpace(b.String())
}

func TestPlanNFT(t *testing.T) {
	t.Parallel()
	const nw = "n"
	names := NFTNamesFor(nw)
	a5, b6 := ent("a/eth0", "10.22.0.5/16"), ent("b/eth0", "10.22.0.6/16")
	a6 := ent("a/eth0", "fd22::5/64")
	r4 := NFTRule{Handle: 4, Tag: NetworkTag(nw, "ip")}
	r6 := NFTRule{Handle: 6, Tag: NetworkTag(nw, "ip6")}
	other := NFTRule{Handle: 9, Tag: NetworkTag("other", "ip")}
	v4State := func(es ...Entry) NFTState {
		return NFTState{Table: true, Chain: true, Sets: []string{names.Src[V4], names.Dst[V4]},
			Src: es, Dst: [2][]AddrRange{ranges(Subnets(es, V4))}, Rules: []NFTRule{r4}}
	}
	ao := owner.Owner{Network: nw, ContainerID: "a", IfName: "eth0"}
	for _, tc := range []struct {
		name string
		st   NFTState
		c    func(cur []Entry) Change
		want string
	}{
		{
			name: "first container",
			c:    func(cur []Entry) Change { return PlanEnsure(cur, ents(a5), ao) },
			want: "add table; add chain\nadd set src4\nadd set dst4\nadd element src4 [10.22.0.5/16 (a/eth0)]\n" +
				"flush set dst4; add element dst4 [{10.22.0.0 10.22.255.255}]\nadd rule ip",
		},
		{
			name: "again",
			st:   v4State(a5),
			c:    func(cur []Entry) Change { return PlanEnsure(cur, ents(a5), ao) },
			want: "",
		},
		{
			name: "second container in the same subnet",
			st:   v4State(a5),
			c:    func(cur []Entry) Change { return PlanEnsure(cur, ents(b6), b6.Owner) },
			want: "add element src4 [10.22.0.6/16 (b/eth0)]",
		},
		{
			name: "repair a lost subnet",
			st:   func() NFTState { s := v4State(a5); s.Dst[V4] = nil; return s }(),
			c:    func(cur []Entry) Change { return PlanEnsure(cur, ents(a5), ao) },
			want: "flush set dst4; add element dst4 [{10.22.0.0 10.22.255.255}]",
		},
		{
			name: "add ipv6",
			st:   v4State(a5),
			c:    func(cur []Entry) Change { return PlanEnsure(cur, ents(a5, a6), ao) },
			want: "add set src6\nadd set dst6\nadd element src6 [fd22::5/64 (a/eth0)]\n" +
				"flush set dst6; add element dst6 [{fd22:: fd22::ffff:ffff:ffff:ffff}]\nadd rule ip6",
		},
		{
			name: "delete one of two",
			st:   v4State(a5, b6),
			c:    func(cur []Entry) Change { return PlanDelete(cur, ao) },
			want: "delete element src4 [10.22.0.5/16 (a/eth0)]",
		},
		{
			name: "delete the last of a subnet",
			st:   v4State(a5, ent("c/eth0", "10.30.0.2/16")),
			c:    func(cur []Entry) Change { return PlanDelete(cur, ao) },
			want: "delete element src4 [10.22.0.5/16 (a/eth0)]\nflush set dst4; add element dst4 [{10.30.0.0 10.30.255.255}]",
		},
		{
			name: "delete the last of the table",
			st:   v4State(a5),
			c:    func(cur []Entry) Change { return PlanDelete(cur, ao) },
			want: "delete table inet berth-nat",
		},
		{
			name: "delete the last of a network, another is left",
			st: func() NFTState {
				s := v4State(a5)
				s.Sets = append(s.Sets, "src4-other", "dst4-other")
				s.Rules = append(s.Rules, other)
				return s
			}(),
			c:    func(cur []Entry) Change { return PlanDelete(cur, ao) },
			want: "delete rule handle 4\ndelete set src4\ndelete set dst4",
		},
		{
			name: "a foreign rule keeps the table",
			st: func() NFTState {
				s := v4State(a5)
				s.Rules = append(s.Rules, NFTRule{Handle: 12, Tag: Tag{Bits: -1}})
				return s
			}(),
			c:    func(cur []Entry) Change { return PlanDelete(cur, ao) },
			want: "delete rule handle 4\ndelete set src4\ndelete set dst4",
		},
		{
			name: "ipv6 only after dual stack",
			st: NFTState{Table: true, Chain: true, Sets: []string{names.Src[V4], names.Dst[V4], names.Src[V6], names.Dst[V6]},
				Src: ents(a5, a6), Dst: [2][]AddrRange{ranges(Subnets(ents(a5), V4)), ranges(Subnets(ents(a6), V6))},
				Rules: []NFTRule{r4, r6}},
			c:    func(cur []Entry) Change { return PlanEnsure(cur, ents(a6), ao) },
			want: "delete rule handle 4\ndelete set src4\ndelete set dst4",
		},
		{
			name: "replace an element without a berth comment",
			st:   func() NFTState { s := v4State(); s.Foreign = []netip.Addr{a5.Addr.Addr()}; return s }(),
			c:    func(cur []Entry) Change { return PlanEnsure(cur, ents(a5), ao) },
			want: "delete element src4 [10.22.0.5/32 (/)]\nadd element src4 [10.22.0.5/16 (a/eth0)]\n" +
				"flush set dst4; add element dst4 [{10.22.0.0 10.22.255.255}]",
		},
		{
			name: "delete with nothing there",
			c:    func(cur []Entry) Change { return PlanDelete(cur, ao) },
			want: "",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ops, err := PlanNFT(nw, tc.st, tc.c(tc.st.Src))
			if err != nil {
				t.Fatal(err)
			}
			if got := opsText(nw, ops); got != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
			if ops.Empty() != (tc.want == "") {
				t.Errorf("Empty() = %v", ops.Empty())
			}
		})
	}
}

func TestPlanNFTOwnRuleIsNoCollision(t *testing.T) {
	t.Parallel()
	// A real collision needs two names with equal SHA-256 prefixes; check that
	// the guard does not fire on the network itself.
	st := NFTState{Table: true, Chain: true, Rules: []NFTRule{{Handle: 1, Tag: NetworkTag("n", "ip")}}}
	if _, err := PlanNFT("n", st, Change{}); err != nil {
		t.Errorf("own rule reported as a collision: %v", err)
	}
}

func TestCheckNFT(t *testing.T) {
	t.Parallel()
	const nw = "n"
	names := NFTNamesFor(nw)
	a5 := ent("a/eth0", "10.22.0.5/16")
	good := NFTState{Table: true, Chain: true, Sets: []string{names.Src[V4], names.Dst[V4]},
		Src: ents(a5), Dst: [2][]AddrRange{ranges(Subnets(ents(a5), V4))},
		Rules: []NFTRule{{Handle: 3, Tag: NetworkTag(nw, "ip")}}}
	if err := CheckNFT(nw, good, ents(a5)); err != nil {
		t.Errorf("check of a good state: %v", err)
	}
	if err := CheckNFT(nw, NFTState{}, nil); err != nil {
		t.Errorf("check of nothing: %v", err)
	}
	for name, tc := range map[string]struct {
		mutate func(*NFTState)
		want   string
	}{
		"no table":   {func(s *NFTState) { s.Table = false }, "chain inet berth-nat postrouting is missing"},
		"no set":     {func(s *NFTState) { s.Sets = s.Sets[:1] }, "set " + names.Dst[V4]},
		"no element": {func(s *NFTState) { s.Src = nil }, "element 10.22.0.5/16 (a/eth0) of set " + names.Src[V4] + " is missing"},
		"other owner": {func(s *NFTState) { s.Src = ents(ent("z/eth0", "10.22.0.5/16")) },
			"element 10.22.0.5/16 (a/eth0)"},
		"no subnet": {func(s *NFTState) { s.Dst[V4] = nil }, "subnet 10.22.0.0/16 is missing"},
		"no rule":   {func(s *NFTState) { s.Rules = nil }, "ip masquerade rule of network \"n\" is missing"},
	} {
		st := good
		st.Sets = append([]string(nil), good.Sets...)
		tc.mutate(&st)
		err := CheckNFT(nw, st, ents(a5))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: check = %v, want an error containing %q", name, err, tc.want)
		}
	}
}

func TestCovered(t *testing.T) {
	rs := ranges([]netip.Prefix{netip.MustParsePrefix("10.22.0.0/16"), netip.MustParsePrefix("10.40.0.0/24")})
	for _, tc := range []struct {
		p    string
		want bool
	}{
		{"10.22.0.0/16", true},
		{"10.22.3.0/24", true},
		{"10.40.0.0/24", true},
		{"10.40.0.0/23", false}, // wider than the range
		{"10.21.0.0/16", false},
		{"10.20.0.0/14", false}, // holds the range, is not held by it
	} {
		if got := Covered(rs, netip.MustParsePrefix(tc.p)); got != tc.want {
			t.Errorf("Covered(%v, %s) = %v, want %v", rs, tc.p, got, tc.want)
		}
	}
}
