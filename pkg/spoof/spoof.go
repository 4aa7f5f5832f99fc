// Package spoof drops frames a container sends with a source MAC that is
// not its own (the bridge plugin's macspoofchk), with nftables through
// netlink in-process in the calling thread's network namespace (no nft
// binary). Layout: table "bridge berth-spoof", base chain "prerouting"
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
)

const (
	tableName = "berth-spoof"
	chainName = "prerouting"
)

// Owner names the attachment a rule belongs to.
type Owner struct{ Network, ContainerID, IfName string }

// Tag is the rule comment for o.
func Tag(o Owner) string {
	return fmt.Sprintf("berth net=%s id=%s if=%s", o.Network, o.ContainerID, o.IfName)
}

// Guard is one attachment's check: frames arriving from HostVeth must carry
// MAC as their source.
type Guard struct {
	Owner    Owner
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
func Ensure(g Guard) error {
	if len(g.MAC) != 6 {
		return fmt.Errorf("macspoofchk for %s: bad MAC %v", g.HostVeth, g.MAC)
	}
	return withConn(func(c *nftables.Conn, t *nftables.Table, ch *nftables.Chain) error {
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
func Delete(o Owner) error {
	return locked(func(c *nftables.Conn) error {
		t := &nftables.Table{Family: nftables.TableFamilyBridge, Name: tableName}
		if err := deleteOwned(c, t, &nftables.Chain{Name: chainName, Table: t}, Tag(o)); err != nil {
			return err
		}
		return c.Flush()
	})
}

// Has reports whether o's rule is in place.
func Has(o Owner) (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyBridge, Name: tableName}
	rules, err := c.GetRules(t, &nftables.Chain{Name: chainName, Table: t})
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, fmt.Errorf("list %s rules: %w", tableName, err)
	}
	for _, r := range rules {
		if s, ok := userdata.GetString(r.UserData, userdata.TypeComment); ok && s == Tag(o) {
			return true, nil
		}
	}
	return false, nil
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

// locked runs fn with a netlink nftables connection, holding the flock
// every writer of the spoof table takes.
func locked(fn func(*nftables.Conn) error) error {
	l, err := lock.Acquire("spoof", 10*time.Second)
	if err != nil {
		return fmt.Errorf("macspoofchk: %w", err)
	}
	defer l.Unlock()
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	return fn(c)
}

// withConn is locked, after making sure the table and chain exist (in
// their own batch: rules can only be listed once the chain exists).
func withConn(fn func(*nftables.Conn, *nftables.Table, *nftables.Chain) error) error {
	return locked(func(c *nftables.Conn) error {
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
