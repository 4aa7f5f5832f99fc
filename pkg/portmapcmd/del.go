package portmapcmd

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// del frees what this attachment holds, from its index: no prevResult or
// mappings needed (nerdctl sends DEL before every ADD, with none). Another
// attachment's ports are never touched.
func del(ctx context.Context, host *netns.NS, args *skel.CmdArgs) error {
	conf, o, err := load(args)
	if err != nil {
		return err
	}
	store := hostport.Open(conf.DataDir)
	l, err := store.Lock(lock.Wait)
	if err != nil {
		return err
	}
	defer l.Unlock()
	return release(host, store, conf, o)
}

// release removes o's datapath state, then its reservations. The caller
// holds the store lock.
func release(host *netns.NS, store hostport.Store, conf *config.Portmap, o owner.Owner) error {
	held, found, err := store.Held(o)
	if err != nil || !found {
		return err
	}
	dp, err := hostport.NewDatapath(host, held.Backend, conf)
	if err != nil {
		return err
	}
	if err := dp.Remove(held); err != nil {
		return err
	}
	return store.Release(held)
}

// gc frees the ports of every attachment of this network that is not in
// cni.dev/valid-attachments.
func gc(ctx context.Context, host *netns.NS, args *skel.CmdArgs) error {
	conf, err := config.ParsePortmap(args.StdinData)
	if err != nil {
		return err
	}
	valid := map[owner.Owner]bool{}
	for _, a := range conf.ValidAttachments {
		valid[owner.Owner{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	store := hostport.Open(conf.DataDir)
	l, err := store.Lock(lock.Wait)
	if err != nil {
		return err
	}
	defer l.Unlock()
	holders, err := store.Holders()
	errs := []error{err}
	for _, h := range holders {
		if h.Owner.Network != conf.Name || valid[h.Owner] {
			continue
		}
		errs = append(errs, release(host, store, conf, h.Owner))
	}
	return errors.Join(errs...)
}
