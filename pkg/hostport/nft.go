package hostport

import (
	"errors"
	"fmt"
	"slices"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/hostport/portplan"
	"github.com/berth-cni/berth/pkg/netns"
)

// nftConn is what the nftables datapath needs of the kernel, in typed
// elements: kernelNFT speaks netlink in one namespace; the tests' fake
// keeps a table in memory. Errors carry the kernel's errno: unix.ENOENT
// for a missing table, set or element, unix.EEXIST (or EBUSY) for a key
// already there with another value, or a table that exists.
type nftConn interface {
	// Elements lists the elements of the set named set.
	//
	// Equivalent: nft list set inet berth-portmap $set
	Elements(set string) ([]portplan.Elem, error)
	// Apply runs tx as one transaction: all of it, or none.
	//
	// Equivalent: nft -f - (one batch)
	Apply(tx nftTx) error
}

// nftTx is one nftables transaction: with Create the table is created
// whole first (its sets, chains and rules; it fails if the table exists),
// then the keys of Del are deleted and the elements of Add added.
type nftTx struct {
	Create   bool
	Del, Add []portplan.Elem
}

// NFT is the nftables datapath of one namespace, programmed over netlink
// in-process: table inet berth-portmap (portplan.NFTTable has its
// picture), whose elements portplan.PlanNFT computes. Add and Remove are
// one transaction each in the common case (the "fast path": no read of
// the table), and a second one only when the first finds the table or an
// element otherwise than expected.
type NFT struct {
	// with runs fn over one connection to the table.
	with func(fn func(c nftConn) error) error
}

// NewNFT returns the nftables datapath of n.
func NewNFT(n *netns.NS) *NFT {
	return &NFT{with: func(fn func(c nftConn) error) error {
		return n.WithNFT(func(c *nftables.Conn) error { return fn(kernelNFT{c}) })
	}}
}

// Add programs a's mappings: one transaction adding its elements. The
// first ADD on a host creates the table, sets, chains and rules in that
// same transaction.
//
// Equivalent: nft add element inet berth-portmap any4 { tcp . 8080 : 10.88.0.5 . 80 }; …
func (d *NFT) Add(a Attachment) error {
	want := portplan.PlanNFT(a)
	if len(want) == 0 {
		return nil
	}
	return d.with(func(c nftConn) error {
		err := c.Apply(nftTx{Add: want})
		switch {
		case err == nil:
			return nil
		case errors.Is(err, unix.ENOENT):
			// No table yet: create it whole, with the elements. If
			// another ADD created it meanwhile, the creation fails and
			// the plain add is tried once more.
			cerr := c.Apply(nftTx{Create: true, Add: want})
			if cerr == nil || !errors.Is(cerr, unix.EEXIST) {
				return nftErr("create table", cerr)
			}
			return nftErr("add elements", c.Apply(nftTx{Add: want}))
		case errors.Is(err, unix.EEXIST), errors.Is(err, unix.EBUSY):
			// A key is there with another target: this holder's own
			// earlier ADD (a retry after the container's address
			// changed). Replace its elements.
			present, rerr := presentKeys(c, want)
			if rerr != nil {
				return rerr
			}
			return nftErr("replace elements", c.Apply(nftTx{Del: present, Add: want}))
		}
		return nftErr("add elements", err)
	})
}

// Remove deletes a's elements in one transaction. Missing elements (a
// crashed ADD, a second DEL) and a missing table are not an error.
//
// Equivalent: nft delete element inet berth-portmap any4 { tcp . 8080 }; …
func (d *NFT) Remove(a Attachment) error {
	have := portplan.PlanNFT(a)
	if len(have) == 0 {
		return nil
	}
	return d.with(func(c nftConn) error {
		err := c.Apply(nftTx{Del: have})
		if err == nil || !errors.Is(err, unix.ENOENT) {
			return nftErr("delete elements", err)
		}
		// Some element or the table is missing: delete what is there.
		present, err := presentKeys(c, have)
		if err != nil || len(present) == 0 {
			return err
		}
		return nftErr("delete elements", c.Apply(nftTx{Del: present}))
	})
}

// Check names the first of a's elements missing from the table, or one
// that leads elsewhere.
//
// Equivalent: nft list set inet berth-portmap any4; …
func (d *NFT) Check(a Attachment) error {
	want := portplan.PlanNFT(a)
	if len(want) == 0 {
		return nil
	}
	return d.with(func(c nftConn) error {
		for _, ws := range bySet(want) {
			set := ws[0].Set()
			have, err := c.Elements(set)
			if err != nil {
				return fmt.Errorf("portmap: table inet %s, set %s: %w", portplan.NFTTable, set, err)
			}
			for _, w := range ws {
				i := slices.IndexFunc(have, func(h portplan.Elem) bool { return h.Key() == w.Key() })
				if i < 0 {
					return fmt.Errorf("portmap: table inet %s, set %s has no element %s for container %s", portplan.NFTTable, set, w.Describe(), a.Owner.ContainerID)
				}
				if w.IsMap() && have[i].Target != w.Target {
					return fmt.Errorf("portmap: table inet %s, map %s sends %s to %s, want %s", portplan.NFTTable, set, w.Describe(), portplan.TargetText(have[i].Target), portplan.TargetText(w.Target))
				}
			}
		}
		return nil
	})
}

// bySet splits es, in set order (as portplan.PlanNFT returns them), into
// one run per set.
func bySet(es []portplan.Elem) [][]portplan.Elem {
	var out [][]portplan.Elem
	for i := 0; i < len(es); {
		j := i + 1
		for j < len(es) && es[j].Set() == es[i].Set() {
			j++
		}
		out = append(out, es[i:j])
		i = j
	}
	return out
}

// presentKeys returns those of es whose keys are in the table now
// (whatever their value). It reads the sets: the slow path, for state a
// crash or a retry left.
func presentKeys(c nftConn, es []portplan.Elem) ([]portplan.Elem, error) {
	var present []portplan.Elem
	for _, ws := range bySet(es) {
		set := ws[0].Set()
		have, err := c.Elements(set)
		if errors.Is(err, unix.ENOENT) {
			continue
		}
		if err != nil {
			return nil, nftErr("read set "+set, err)
		}
		for _, w := range ws {
			if slices.ContainsFunc(have, func(h portplan.Elem) bool { return h.Key() == w.Key() }) {
				present = append(present, w)
			}
		}
	}
	return present, nil
}

func nftErr(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("portmap: nftables: %s in table inet %s: %w", what, portplan.NFTTable, err)
}
