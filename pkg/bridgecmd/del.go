package bridgecmd

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/state"
	"github.com/berth-cni/berth/pkg/undo"
)

// Del is the DEL command. Its steps each wait on something else (the
// kernel's RCU grace periods when a veth or an nft set element goes, the
// IPAM plugin's exec), so they run at once: DEL takes as long as the
// slowest, not the sum. Only an IPAM plugin that talks through the
// container's interface (ipam.NeedsInterface: dhcp's RELEASE) is released
// before the veth goes; other IPAM plugins release in their own files.
// Every step runs even if another fails, a missing object is success, and
// none needs the container's namespace (the host veth name derives from
// the owner; nft state is tagged). The netfilter steps close their sockets
// only once the veth is gone (vethGone: nat.Backend.DeleteAfter says
// why). The record goes last.
func (p Plugin) Del(ctx context.Context, args *skel.CmdArgs) error {
	c, err := p.begin(args)
	if err != nil {
		return err
	}
	defer c.close()
	rec, found, err := c.store.Get(args.ContainerID, args.IfName)
	if err != nil {
		return err
	}
	d := deletion{cmd: c, rec: rec, found: found, vethGone: make(chan struct{})}
	steps := []undo.NamedStep{{Name: "veth", Fn: d.unplug}, {Name: "masquerade", Fn: d.unmasq}}
	switch t := c.conf.IPAMConf.Type; {
	case t == "":
	case ipam.NeedsInterface(t):
		steps[0] = undo.NamedStep{Name: "ipam then veth", Fn: func(ctx context.Context) error {
			return errors.Join(d.release(ctx), d.unplug(ctx))
		}}
	default:
		steps = append(steps, undo.NamedStep{Name: "ipam", Fn: d.release})
	}
	if c.conf.MacSpoofChk {
		steps = append(steps, undo.NamedStep{Name: "macspoofchk", Fn: d.unspoof})
	}
	if err := undo.All(ctx, steps...); err != nil {
		return err
	}
	return c.store.Delete(args.ContainerID, args.IfName)
}

// deletion is one DEL's state.
type deletion struct {
	*cmd
	rec      state.Record
	found    bool          // a record of the attachment was there
	vethGone chan struct{} // closed when unplug returned
}

// unplug deletes the host veth (and so the container's end), whatever
// else fails.
func (d deletion) unplug(context.Context) error {
	defer close(d.vethGone)
	return d.k.DeleteHostVeth(d.owner.HostVeth())
}

func (d deletion) release(ctx context.Context) error {
	return d.ipam.DelKnown(ctx, d.conf.IPAMConf.Type, d.net.IPAMConf, d.at, recordedAddrs(d.rec))
}

func (d deletion) unspoof(context.Context) error { return d.k.DeleteSpoof(d.owner, d.vethGone) }

// unmasq removes the masquerade: in the backend the record names (no need
// to sweep, and fork iptables-save for, the others), or with no record in
// every backend it may be in.
func (d deletion) unmasq(context.Context) error {
	if !d.found {
		return d.deleteMasq(d.owner, d.vethGone)
	}
	if d.rec.MasqBackend == "" {
		return nil
	}
	return d.deleteMasqIn(d.rec.MasqBackend, d.owner, d.vethGone)
}

// deleteMasq removes o's masquerade state from every backend it may be in,
// for when no record says which: the config's backend may have changed
// since the ADD. linkGone is nat.Backend.DeleteAfter's.
func (c *cmd) deleteMasq(o owner.Owner, linkGone <-chan struct{}) error {
	var errs []error
	for _, name := range nat.Backends {
		if nat.Available(name) {
			errs = append(errs, c.deleteMasqIn(name, o, linkGone))
		}
	}
	return errors.Join(errs...)
}

func (c *cmd) deleteMasqIn(backend string, o owner.Owner, linkGone <-chan struct{}) error {
	b, err := c.k.Masq(backend)
	if err != nil {
		return err
	}
	return b.DeleteAfter(o, linkGone)
}
