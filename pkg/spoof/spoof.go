// Package spoof drops frames a container sends with a source MAC that is
// not its own (the bridge plugin's macspoofchk), with nftables through
// netlink in-process in the namespace it is given (no nft binary). Layout: table "bridge berth-spoof", base chain "prerouting"
// (filter, hook prerouting, priority -300), one rule per attachment,
//
//	iifname "bth…" ether saddr != <mac> drop comment "berth net=<n> id=<c> if=<i>"
//
// whose comment names its owner so DEL and GC remove exactly it.
package spoof

import (
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

const (
	tableName = "berth-spoof"
	chainName = "prerouting"
)

// Tag is the rule comment for o.
func Tag(o owner.Owner) string {
	return fmt.Sprintf("berth net=%s id=%s if=%s", o.Network, o.ContainerID, o.IfName)
}

// Guard is one attachment's check: frames arriving from HostVeth must carry
// MAC as their source.
type Guard struct {
	Owner    owner.Owner
	HostVeth string
	MAC      net.HardwareAddr
}

// Exprs renders g's match-and-drop as nftables expressions (pure).
func Exprs(g Guard) []expr.Any {
	ifname := make([]byte, unix.IFNAMSIZ)
	copy(ifname, g.HostVeth)
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: ifname},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(g.MAC)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// Ensure installs g's rule, replacing any earlier rule of the same owner,
// in one transaction.
//
// Equivalent: nft add rule bridge berth-spoof prerouting iifname $veth ether saddr != $mac drop comment …
func Ensure(host *netns.NS, g Guard) error {
	if len(g.MAC) != 6 {
		return fmt.Errorf("macspoofchk for %s: bad MAC %v", g.HostVeth, g.MAC)
	}
	return withConn(host, func(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain) error {
		if err := deleteOwned(c, t, ch, Tag(g.Owner)); err != nil {
			return err
		}
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: Exprs(g),
			UserData: userdata.AppendString(nil, userdata.TypeComment, Tag(g.Owner))})
		return c.Flush()
	})
}

// Delete removes o's rule; none is not an error.
//
// Equivalent: nft delete rule bridge berth-spoof prerouting handle $h
func Delete(host *netns.NS, o owner.Owner) error { return DeleteAfter(host, o, nil) }

// DeleteAfter is Delete for a caller that deletes a link of host
// meanwhile and closes linkGone once that is done: the netlink socket is
// closed only then (nil: at once), as nat's DeleteAfter does and for the
// same reason: its close after a commit that deleted a rule waits out a
// grace period holding the namespace's nf_tables commit mutex, which the
// link's unregistration takes too.
func DeleteAfter(host *netns.NS, o owner.Owner, linkGone <-chan struct{}) error {
	c, err := host.NFT()
	if err != nil {
		return err
	}
	l, err := lock.Acquire("spoof", 10*time.Second)
	if err == nil {
		t := &nftables.Table{Family: nftables.TableFamilyBridge, Name: tableName}
		err = deleteOwned(c, t, &nftables.Chain{Name: chainName, Table: t}, Tag(o))
		if err == nil {
			err = c.Flush()
		}
		err = errors.Join(err, l.Unlock())
	} else {
		err = fmt.Errorf("macspoofchk: %w", err)
	}
	if linkGone != nil {
		<-linkGone
	}
	return errors.Join(err, c.CloseLasting())
}

// Has reports whether o's rule is in place.
//
// Equivalent: nft list chain bridge berth-spoof prerouting | grep "$(Tag o)"
func Has(host *netns.NS, o owner.Owner) (bool, error) {
	found := false
	err := host.WithNFT(func(c *nftables.Conn) error {
		t := &nftables.Table{Family: nftables.TableFamilyBridge, Name: tableName}
		rules, err := c.GetRules(t, &nftables.Chain{Name: chainName, Table: t})
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return fmt.Errorf("list %s rules: %w", tableName, err)
		}
		for _, r := range rules {
			if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && s == Tag(o) {
				found = true
			}
		}
		return nil
	})
	return found, err
}

func deleteOwned(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain, tag string) error {
	rules, err := c.GetRules(t, ch)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("list %s rules: %w", tableName, err)
	}
	for _, r := range rules {
		if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && s == tag {
			if err := c.DelRule(r); err != nil {
				return fmt.Errorf("delete rule %d: %w", r.Handle, err)
			}
		}
	}
	return nil
}

// locked runs fn with an nftables connection in host, holding the flock
// every writer of the spoof table takes.
func locked(host *netns.NS, fn func(*nftables.Conn) error) error {
	l, err := lock.Acquire("spoof", 10*time.Second)
	if err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	defer l.Unlock()
	return host.WithNFT(fn)
}

// withConn is locked, after making sure the table and chain exist (in
// their own batch: rules can only be listed once the chain exists).
func withConn(host *netns.NS, fn func(*nftables.Conn, *nftables.Table, *nftables.Chain) error) error {
	return locked(host, func(c *nftables.Conn) error {
		t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyBridge, Name: tableName})
		policy := nftables.ChainPolicyAccept
		ch := c.AddChain(&nftables.Chain{Name: chainName, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRef(-300), Policy: &policy})
		if err := c.Flush(); err != nil {
			return fmt.Errorf("create table bridge %s: %w", tableName, err)
		}
		return fn(c, t, ch)
	})
}
