package hostport

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/hostport/portplan"
)

// fakeNFT is table inet berth-portmap in memory, behaving as the kernel
// does for berth's transactions (pinned against the kernel by
// TestNFTScenariosKernel): a transaction is all or nothing; adding to a
// missing table, or deleting a missing element, is ENOENT; adding a key
// that is there with the same value changes nothing (the old comment
// stays), with another value, or an interval overlapping another of the
// same container, is EEXIST; creating a table that exists is EEXIST.
type fakeNFT struct {
	sets map[string][]portplan.Elem // by set name; nil: no table
}

func (f *fakeNFT) Elements(set string) ([]portplan.Elem, error) {
	es, ok := f.sets[set]
	if !ok {
		return nil, fmt.Errorf("fake: list set %s: %w", set, unix.ENOENT)
	}
	return slices.Clone(es), nil
}

func (f *fakeNFT) Apply(tx nftTx) error {
	next := map[string][]portplan.Elem{}
	for s, es := range f.sets {
		next[s] = slices.Clone(es)
	}
	if f.sets == nil {
		next = nil
	}
	if tx.Create {
		if next != nil {
			return fmt.Errorf("fake: create table: %w", unix.EEXIST)
		}
		next = map[string][]portplan.Elem{}
		for _, s := range portplan.SetNames {
			next[s] = nil
		}
	}
	for _, d := range tx.Del {
		es, ok := next[d.Set()]
		i := slices.IndexFunc(es, func(e portplan.Elem) bool { return e.Key() == d.Key() })
		if !ok || i < 0 {
			return fmt.Errorf("fake: delete %s: %w", d.KeyText(), unix.ENOENT)
		}
		next[d.Set()] = slices.Delete(es, i, i+1)
	}
	for _, a := range tx.Add {
		es, ok := next[a.Set()]
		if !ok {
			return fmt.Errorf("fake: add %s: %w", a.KeyText(), unix.ENOENT)
		}
		if i := slices.IndexFunc(es, func(e portplan.Elem) bool { return e.Key() == a.Key() }); i >= 0 {
			if es[i].Target != a.Target {
				return fmt.Errorf("fake: add %s: %w", a.KeyText(), unix.EEXIST)
			}
			continue
		}
		if slices.ContainsFunc(es, func(e portplan.Elem) bool { return overlaps(e, a) }) {
			return fmt.Errorf("fake: add %s: %w", a.KeyText(), unix.EEXIST)
		}
		next[a.Set()] = append(es, a)
	}
	f.sets = next
	return nil
}

// overlaps reports two interval elements whose ranges intersect in every
// field (the container's address is a range of one).
func overlaps(a, b portplan.Elem) bool {
	return a.Kind == portplan.SetHairpin && b.Kind == portplan.SetHairpin && a.Target == b.Target && a.Src.Overlaps(b.Src)
}

// recorder is an nftConn that writes each request to another and its
// outcome into a transcript, in nft's syntax:
//
//	list set inet berth-portmap any4: 2 elements
//	create table inet berth-portmap (sets, chains, rules)
//	delete element inet berth-portmap any4 { tcp . 8080 }
//	add element inet berth-portmap any4 { tcp . 8080 comment "…" : 10.88.0.5 . 80 }
//	commit: file exists
//
// Outcomes are errnos, so the transcripts of the fake and of the kernel
// read alike.
type recorder struct {
	c   nftConn
	log *strings.Builder
	// beforeCreate, when set, runs (once) on c before the first
	// transaction that creates the table: another writer racing it.
	beforeCreate func(c nftConn) error
}

func (r *recorder) Elements(set string) ([]portplan.Elem, error) {
	es, err := r.c.Elements(set)
	if err != nil {
		fmt.Fprintf(r.log, "list set inet %s %s: %s\n", portplan.NFTTable, set, errnoText(err))
		return es, connErr{err}
	}
	unit := "elements"
	if len(es) == 1 {
		unit = "element"
	}
	fmt.Fprintf(r.log, "list set inet %s %s: %d %s\n", portplan.NFTTable, set, len(es), unit)
	return es, nil
}

func (r *recorder) Apply(tx nftTx) error {
	if tx.Create && r.beforeCreate != nil {
		race := r.beforeCreate
		r.beforeCreate = nil
		if err := race(r.c); err != nil {
			return fmt.Errorf("the racing writer: %w", err)
		}
		fmt.Fprintf(r.log, "(another ADD creates the table)\n")
	}
	if tx.Create {
		fmt.Fprintf(r.log, "create table inet %s (sets, chains, rules)\n", portplan.NFTTable)
	}
	for _, e := range tx.Del {
		fmt.Fprintf(r.log, "delete element inet %s %s { %s }\n", portplan.NFTTable, e.Set(), e.KeyText())
	}
	for _, e := range tx.Add {
		fmt.Fprintln(r.log, e)
	}
	err := r.c.Apply(tx)
	fmt.Fprintf(r.log, "commit: %s\n", errnoText(err))
	if err != nil {
		return connErr{err}
	}
	return nil
}

// connErr is an error of the recorded conn, worded as its errno alone:
// what berth's messages wrap around it then reads the same from the fake
// and from the kernel.
type connErr struct{ err error }

func (e connErr) Error() string { return errnoText(e.err) }
func (e connErr) Unwrap() error { return e.err }

// errnoText is err's errno as the kernel words it, "ok" for nil.
func errnoText(err error) string {
	var errno syscall.Errno
	switch {
	case err == nil:
		return "ok"
	case errors.As(err, &errno):
		return errno.Error()
	}
	return err.Error()
}

// dumpTable renders c's table, set by set in table order and each set's
// elements sorted (the kernel lists a set in its own order).
func dumpTable(c nftConn) string {
	var b strings.Builder
	missing := 0
	for _, s := range portplan.SetNames {
		es, err := c.Elements(s)
		if errors.Is(err, unix.ENOENT) {
			missing++
		}
		if err != nil {
			fmt.Fprintf(&b, "set %s: %s\n", s, errnoText(err))
			continue
		}
		lines := make([]string, len(es))
		for i, e := range es {
			lines[i] = e.String()
		}
		slices.Sort(lines)
		for _, l := range lines {
			b.WriteString(l + "\n")
		}
	}
	if missing == len(portplan.SetNames) {
		return "(no table)\n"
	}
	return b.String()
}
