package nat

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"

	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/nat/natplan"
	bnetns "github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// backendCase is one backend under test with its own view of the kernel.
type backendCase struct {
	name  string
	needs []string                 // programs the case runs
	mk    func(*bnetns.NS) Backend // the backend acting in a namespace
	// dump renders berth's kernel state in the namespace as text; "" when
	// berth has nothing there.
	dump func(t *testing.T, ns *testNS) string
	// drop removes the entry for addr behind the backend's back.
	drop func(t *testing.T, ns *testNS, network string, addr netip.Addr)
}

func backendCases() []backendCase {
	ipt := func(name string, cmds iptables.Commands) backendCase {
		return backendCase{
			name:  name,
			needs: []string{cmds.Restore4, cmds.Save4, cmds.Restore6, cmds.Save6},
			mk:    func(n *bnetns.NS) Backend { return NewIPTables(n, cmds) },
			dump:  func(t *testing.T, ns *testNS) string { return iptDump(t, ns, cmds) },
			drop: func(t *testing.T, ns *testNS, network string, addr netip.Addr) {
				iptDrop(t, ns, cmds, network, addr)
			},
		}
	}
	return []backendCase{
		{name: "nftables", mk: func(n *bnetns.NS) Backend { return nftBackend{ns: n} }, dump: nftDump, drop: nftDrop},
		ipt("iptables", iptables.Default),
		ipt("iptables-legacy", iptables.Legacy),
	}
}

func (bc backendCase) require(t *testing.T) {
	t.Helper()
	needRoot(t)
	for _, c := range bc.needs {
		needCommand(t, c)
	}
}

// nftDump lists table inet berth-nat through google/nftables: chains, sets
// with their elements, and rules with handles (a rewritten rule shows).
func nftDump(t *testing.T, ns *testNS) string {
	t.Helper()
	var lines []string
	ns.must(t, "list table inet berth-nat", func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		tables, err := c.ListTablesOfFamily(nftables.TableFamilyINet)
		if err != nil || !slices.ContainsFunc(tables, func(tb *nftables.Table) bool { return tb.Name == natplan.NFTTable }) {
			return err
		}
		lines = append(lines, "table inet "+natplan.NFTTable)
		chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
		if err != nil {
			return err
		}
		for _, ch := range chains {
			if ch.Table.Name == natplan.NFTTable {
				lines = append(lines, fmt.Sprintf("chain %s type %s hook %d priority %d", ch.Name, ch.Type, *ch.Hooknum, *ch.Priority))
			}
		}
		sets, err := c.GetSets(natTable)
		if err != nil {
			return err
		}
		for _, s := range sets {
			elems, lerr := c.GetSetElements(s)
			if lerr != nil {
				return lerr
			}
			var es []string
			for _, e := range elems {
				a, _ := netip.AddrFromSlice(e.Key)
				es = append(es, fmt.Sprintf("%s end=%v %q", a, e.IntervalEnd, e.Comment))
			}
			slices.Sort(es)
			lines = append(lines, fmt.Sprintf("set %s interval=%v { %s }", s.Name, s.Interval, strings.Join(es, ", ")))
		}
		rules, err := c.GetRules(natTable, &nftables.Chain{Name: natplan.NFTChain, Table: natTable})
		if err != nil {
			return err
		}
		for _, r := range rules {
			com, _ := ruleComment(r.UserData)
			lines = append(lines, fmt.Sprintf("rule handle %d: %d exprs, comment %q", r.Handle, len(r.Exprs), com))
		}
		return nil
	})
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// nftDrop deletes addr from the network's address set.
//
// Equivalent: nft delete element inet berth-nat src4-$h { $addr }
func nftDrop(t *testing.T, ns *testNS, network string, addr netip.Addr) {
	t.Helper()
	f := natplan.V4
	if addr.Is6() {
		f = natplan.V6
	}
	ns.must(t, "delete element "+addr.String(), func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		set := &nftables.Set{Table: natTable, Name: natplan.NFTNamesFor(network).Src[f]}
		if err := c.SetDeleteElements(set, []nftables.SetElement{{Key: addr.AsSlice()}}); err != nil {
			return err
		}
		return c.Flush()
	})
}

// iptDump is berth's part of both nat tables as iptables-save prints it.
func iptDump(t *testing.T, ns *testNS, cmds iptables.Commands) string {
	t.Helper()
	var lines []string
	for _, save := range []string{cmds.Save4, cmds.Save6} {
		for _, l := range strings.Split(ns.output(t, save, "-t", "nat"), "\n") {
			if strings.HasPrefix(l, ":BERTH-MASQ-") || strings.Contains(l, "BERTH-MASQ-") {
				name, _, _ := strings.Cut(l, " [") // chain counters change with traffic
				lines = append(lines, save+": "+name)
			}
		}
	}
	return strings.Join(lines, "\n")
}

// iptDrop deletes addr's POSTROUTING rule.
//
// Equivalent: iptables -t nat -D POSTROUTING -s $addr/32 -m comment --comment … -j BERTH-MASQ-$h
func iptDrop(t *testing.T, ns *testNS, cmds iptables.Commands, network string, addr netip.Addr) {
	t.Helper()
	f, save, restore := natplan.V4, cmds.Save4, cmds.Restore4
	if addr.Is6() {
		f, save, restore = natplan.V6, cmds.Save6, cmds.Restore6
	}
	nt, err := iptables.ParseSave(ns.output(t, save, "-t", "nat"))
	if err != nil {
		t.Fatal(err)
	}
	st := natplan.IPTNetwork(network, f, nt)
	i := slices.IndexFunc(st.Entries, func(e natplan.Entry) bool { return e.Addr.Addr() == addr })
	if i < 0 {
		t.Fatalf("no POSTROUTING rule for %s", addr)
	}
	if _, err := ns.ns.Run("*nat\n-D POSTROUTING "+st.Specs[i]+"\nCOMMIT\n", restore, "--noflush"); err != nil {
		t.Fatalf("delete rule for %s: %v", addr, err)
	}
}

func masq(network, id, ifname string, addrs ...string) Masq {
	m := Masq{Owner: owner.Owner{Network: network, ContainerID: id, IfName: ifname}}
	for _, a := range addrs {
		m.Addrs = append(m.Addrs, netip.MustParsePrefix(a))
	}
	return m
}

// TestBackendLifecycle runs each backend through ADD, ADD again, a second
// container, CHECK after damage, DEL of strangers, and DEL of both.
func TestBackendLifecycle(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			bc.require(t)
			t.Parallel()
			ns := newNS(t, "life")
			b := bc.mk(ns.ns)
			a := masq("berthnet", "ctr-a", "eth0", "10.22.0.5/16", "fd22::5/64")
			// A container ID over 64 bytes is stored shortened.
			bm := masq("berthnet", strings.Repeat("b", 100), "eth1", "10.22.0.6/16")

			ns.must(t, "ensure a", func() error { return b.Ensure(a) })
			first := bc.dump(t, ns)
			if first == "" {
				t.Fatal("ensure a left nothing in the kernel")
			}
			t.Logf("state after ensure a:\n%s", first)
			ns.must(t, "ensure a again", func() error { return b.Ensure(a) })
			if again := bc.dump(t, ns); again != first {
				t.Errorf("ensure twice changed the state:\n%s\nthen:\n%s", first, again)
			}
			ns.must(t, "check a", func() error { return b.Check(a) })

			ns.must(t, "ensure b", func() error { return b.Ensure(bm) })
			storedB := Masq{Owner: StoredOwner(bm.Owner), Addrs: bm.Addrs}
			wantList(t, ns, b, "berthnet", []Masq{a, storedB})
			wantList(t, ns, b, "othernet", nil)

			before := bc.dump(t, ns)
			ns.must(t, "delete strangers", func() error {
				return errors.Join(
					b.Delete(owner.Owner{Network: "berthnet", ContainerID: "nobody", IfName: "eth0"}),
					b.Delete(owner.Owner{Network: "othernet", ContainerID: "ctr-a", IfName: "eth0"}),
					b.Delete(owner.Owner{Network: "berthnet", ContainerID: "ctr-a", IfName: "eth9"}))
			})
			if after := bc.dump(t, ns); after != before {
				t.Errorf("deleting strangers changed the state:\n%s\nthen:\n%s", before, after)
			}

			bc.drop(t, ns, "berthnet", netip.MustParseAddr("10.22.0.5"))
			err := ns.do(func() error { return b.Check(a) })
			if err == nil || !strings.Contains(err.Error(), "10.22.0.5") {
				t.Errorf("check after losing 10.22.0.5 = %v, want an error naming it", err)
			}
			ns.must(t, "ensure a repairs", func() error { return b.Ensure(a) })
			ns.must(t, "check a after repair", func() error { return b.Check(a) })

			ns.must(t, "delete a", func() error { return b.Delete(a.Owner) })
			wantList(t, ns, b, "berthnet", []Masq{storedB})
			ns.must(t, "check b", func() error { return b.Check(bm) })
			if err := ns.do(func() error { return b.Check(a) }); err == nil {
				t.Error("check a after delete a = nil")
			}
			if left := bc.dump(t, ns); !strings.Contains(left, "10.22.0.6") || strings.Contains(left, "10.22.0.5") {
				t.Errorf("after delete a:\n%s", left)
			}

			// Deleting by the stored (shortened) owner works too.
			ns.must(t, "delete b", func() error { return b.Delete(StoredOwner(bm.Owner)) })
			wantList(t, ns, b, "berthnet", nil)
			if left := bc.dump(t, ns); left != "" {
				t.Errorf("state left after deleting every owner:\n%s", left)
			}
			ns.must(t, "delete b again", func() error { return b.Delete(bm.Owner) })
		})
	}
}

// TestBackendMoves rewrites entries in place: an owner's subnet length
// changes, then its address goes to another owner (IPAM reused it).
func TestBackendMoves(t *testing.T) {
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			bc.require(t)
			t.Parallel()
			ns := newNS(t, "move")
			b := bc.mk(ns.ns)
			a16 := masq("movenet", "ctr-a", "eth0", "10.22.0.5/16")
			a24 := masq("movenet", "ctr-a", "eth0", "10.22.0.5/24")
			c24 := masq("movenet", "ctr-c", "eth0", "10.22.0.5/24")
			ns.must(t, "ensure a /16", func() error { return b.Ensure(a16) })
			ns.must(t, "ensure a /24", func() error { return b.Ensure(a24) })
			wantList(t, ns, b, "movenet", []Masq{a24})
			ns.must(t, "check a /24", func() error { return b.Check(a24) })
			ns.must(t, "ensure c", func() error { return b.Ensure(c24) })
			wantList(t, ns, b, "movenet", []Masq{c24})
			ns.must(t, "check c", func() error { return b.Check(c24) })
			if err := ns.do(func() error { return b.Check(a24) }); err == nil {
				t.Error("check a after its address moved to c = nil")
			}
			ns.must(t, "delete a (holds nothing now)", func() error { return b.Delete(a24.Owner) })
			wantList(t, ns, b, "movenet", []Masq{c24})
			ns.must(t, "delete c", func() error { return b.Delete(c24.Owner) })
			if left := bc.dump(t, ns); left != "" {
				t.Errorf("state left:\n%s", left)
			}
		})
	}
}

// TestNFTForeignElement: an element someone added without berth's comment
// is replaced by Ensure of its address, and does not break List.
func TestNFTForeignElement(t *testing.T) {
	needRoot(t)
	t.Parallel()
	ns := newNS(t, "foreign")
	b := nftBackend{ns: ns.ns}
	m := masq("fnet", "ctr-a", "eth0", "10.22.0.5/16")
	other := masq("fnet", "ctr-b", "eth0", "10.22.0.6/16")
	ns.must(t, "ensure b", func() error { return b.Ensure(other) })
	ns.must(t, "add a bare element", func() error {
		c, err := nftables.New()
		if err != nil {
			return err
		}
		set := &nftables.Set{Table: natTable, Name: natplan.NFTNamesFor("fnet").Src[natplan.V4]}
		if err := c.SetAddElements(set, []nftables.SetElement{{Key: []byte{10, 22, 0, 5}, Comment: "not berth"}}); err != nil {
			return err
		}
		return c.Flush()
	})
	wantList(t, ns, b, "fnet", []Masq{other})
	ns.must(t, "ensure a", func() error { return b.Ensure(m) })
	ns.must(t, "check a", func() error { return b.Check(m) })
	wantList(t, ns, b, "fnet", []Masq{m, other})
}

// TestBackendConcurrent runs 20 ADDs at once, as 20 plugin processes
// would, then 20 DELs: no element is lost and no rule duplicated.
func TestBackendConcurrent(t *testing.T) {
	const n = 20
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			bc.require(t)
			t.Parallel()
			ns := newNS(t, "conc")
			var ms []Masq
			for i := range n {
				// Two adjacent subnets: the subnet set merges them.
				ms = append(ms, masq("busy", fmt.Sprintf("ctr-%02d", i), "eth0", fmt.Sprintf("10.%d.0.%d/16", 40+i%2, 10+i)))
			}
			parallel(t, ns, ms, func(b Backend, m Masq) error { return b.Ensure(m) }, bc.mk(ns.ns))
			wantList(t, ns, bc.mk(ns.ns), "busy", ms)
			for _, m := range ms {
				ns.must(t, "check "+m.Owner.ContainerID, func() error { return bc.mk(ns.ns).Check(m) })
			}
			state := bc.dump(t, ns)
			if bc.name == "nftables" {
				if c := strings.Count(state, "rule handle"); c != 1 {
					t.Errorf("%d rules, want 1:\n%s", c, state)
				}
				if !strings.Contains(state, "set "+natplan.NFTNamesFor("busy").Dst[natplan.V4]+" interval=true { 10.40.0.0 end=false \"\", 10.42.0.0 end=true \"\" }") {
					t.Errorf("subnet set does not hold 10.40.0.0-10.41.255.255:\n%s", state)
				}
			} else if c := strings.Count(state, "-j RETURN"); c != 2 {
				t.Errorf("%d RETURN rules, want 2:\n%s", c, state)
			}
			parallel(t, ns, ms, func(b Backend, m Masq) error { return b.Delete(m.Owner) }, bc.mk(ns.ns))
			if left := bc.dump(t, ns); left != "" {
				t.Errorf("state left after deleting every owner:\n%s", left)
			}
		})
	}
}

// parallel runs fn for every m at once, each on its own thread in ns.
func parallel(t *testing.T, ns *testNS, ms []Masq, fn func(Backend, Masq) error, b Backend) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(ms))
	for i, m := range ms {
		// From goroutines on any thread: the backend acts in its namespace.
		wg.Go(func() { errs[i] = fn(b, m) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
}

func wantList(t *testing.T, ns *testNS, b Backend, network string, want []Masq) {
	t.Helper()
	var got []Masq
	ns.must(t, "list "+network, func() error {
		var err error
		got, err = b.List(network)
		return err
	})
	want = slices.Clone(want)
	slices.SortFunc(want, func(x, y Masq) int { return strings.Compare(x.Owner.ContainerID, y.Owner.ContainerID) })
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("List(%s) = %v\nwant %v", network, got, want)
	}
}

// TestBackendAdd: Add builds the same kernel state as Ensure through every
// path: the first owner (no sets yet: the fallback), owners on the same
// subnet (the read-free batch), an address IPAM gave out again (it moves),
// an element without berth's comment, and a subnet overlapping the set's
// merged range (the batch fails, the fallback merges).
func TestBackendAdd(t *testing.T) {
	steps := []Masq{
		masq("addnet", "ctr-a", "eth0", "10.22.0.5/16", "fd22::5/64"),
		masq("addnet", "ctr-b", "eth0", "10.22.0.6/16", "fd22::6/64"),
		masq("addnet", "ctr-c", "eth0", "10.22.0.5/16"), // a's v4 address again
		masq("addnet", "ctr-d", "eth0", "10.22.1.7/24"), // inside the /16: set unchanged
		masq("addnet", "ctr-e", "eth0", "10.21.0.7/15"), // overlaps the /16's range
		masq("othernet", "ctr-f", "eth0", "10.23.0.5/16"),
	}
	for _, bc := range backendCases() {
		t.Run(bc.name, func(t *testing.T) {
			bc.require(t)
			t.Parallel()
			byEnsure, byAdd := newNS(t, "adde"), newNS(t, "adda")
			b, be := bc.mk(byAdd.ns), bc.mk(byEnsure.ns)
			for _, m := range steps {
				if err := b.Add(m); err != nil {
					t.Fatalf("add %s: %v", m.Owner.ContainerID, err)
				}
				if err := b.Check(m); err != nil {
					t.Fatalf("check %s: %v", m.Owner.ContainerID, err)
				}
				if err := be.Ensure(m); err != nil {
					t.Fatalf("ensure %s: %v", m.Owner.ContainerID, err)
				}
				if e, a := bc.dump(t, byEnsure), bc.dump(t, byAdd); e != a {
					t.Fatalf("after %s, Ensure made:\n%s\nAdd made:\n%s", m.Owner.ContainerID, e, a)
				}
			}
			// a lost 10.22.0.5 to c; its v6 address stays.
			wantList(t, byAdd, b, "addnet", []Masq{
				masq("addnet", "ctr-a", "eth0", "fd22::5/64"), steps[1], steps[2], steps[3], steps[4]})
			for _, m := range steps {
				byAdd.must(t, "delete "+m.Owner.ContainerID, func() error { return b.Delete(m.Owner) })
			}
			if left := bc.dump(t, byAdd); left != "" {
				t.Errorf("state left after deleting every owner:\n%s", left)
			}
		})
	}
}

// getElem reads one element by key: the comment of a present one, found
// false for an absent key; Add's fast path rests on it.
func TestNFTGetElem(t *testing.T) {
	needRoot(t)
	t.Parallel()
	ns := newNS(t, "getelem")
	m := masq("gnet", "ctr-a", "eth0", "10.22.0.5/16")
	ns.must(t, "ensure", func() error { return nftBackend{ns: ns.ns}.Ensure(m) })
	set := natplan.NFTNamesFor("gnet").Src[natplan.V4]
	want := natplan.OwnerTag("", natplan.Entry{Owner: StoredOwner(m.Owner), Addr: m.Addrs[0]}).String()
	ns.must(t, "get present", func() error {
		conn, err := ns.ns.Netfilter()
		if err != nil {
			return err
		}
		defer conn.Close()
		c, found, err := getElem(conn, set, []byte{10, 22, 0, 5})
		if err != nil || !found || c != want {
			return fmt.Errorf("getElem(10.22.0.5) = %q, %v, %v; want %q, true, nil", c, found, err, want)
		}
		return nil
	})
	ns.must(t, "get absent", func() error {
		conn, err := ns.ns.Netfilter()
		if err != nil {
			return err
		}
		defer conn.Close()
		c, found, err := getElem(conn, set, []byte{10, 22, 0, 6})
		if err != nil || found {
			return fmt.Errorf("getElem(10.22.0.6) = %q, %v, %v; want not found", c, found, err)
		}
		return nil
	})
}
