package bridgecmd

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/spoof"
	"github.com/berth-cni/berth/pkg/state"
)

// GC is the GC command: it removes every attachment of this network that is not in
// cni.dev/valid-attachments: its host veth, its addresses (through the IPAM
// plugin's DEL on its behalf), its masquerade state and its record. Stale
// attachments are found in all three places berth tags: records, host veth
// aliases and masquerade element comments, so a half-done ADD is found too.
func (p Plugin) GC(ctx context.Context, args *skel.CmdArgs) error {
	conf, args, err := p.Load(args)
	if err != nil {
		return err
	}
	valid := map[link.Owner]bool{}
	for _, a := range conf.ValidAttachments {
		o := link.Owner{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName}
		valid[o] = true
		// nat.List reports over-long container IDs in their stored
		// (shortened) form: a valid attachment must match either form.
		so := nat.StoredOwner(natOwner(o))
		valid[link.Owner{Network: conf.Name, ContainerID: so.ContainerID, IfName: so.IfName}] = true
	}
	store := state.Open(conf.DataDir, conf.Name)
	stale := map[link.Owner]bool{}
	var errs []error
	recs, err := store.List()
	errs = append(errs, err)
	for _, r := range recs {
		stale[link.Owner{Network: conf.Name, ContainerID: r.ContainerID, IfName: r.IfName}] = true
	}
	veths, err := link.ListHostVeths(conf.Name)
	errs = append(errs, err)
	for _, v := range veths {
		stale[v.Owner] = true
	}
	for _, name := range []string{"nftables", "iptables"} {
		if !nat.Available(name) {
			continue
		}
		b, err := nat.New(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ms, err := b.List(conf.Name)
		errs = append(errs, err)
		for _, m := range ms {
			stale[link.Owner{Network: conf.Name, ContainerID: m.Owner.ContainerID, IfName: m.Owner.IfName}] = true
		}
	}
	for o := range stale {
		if valid[o] {
			continue
		}
		errs = append(errs, releaseStale(ctx, conf, args.StdinData, store, o))
	}
	if conf.IPAMConf.Type != "" {
		errs = append(errs, ipam.GC(ctx, conf.IPAMConf.Type, args.StdinData))
	}
	return errors.Join(errs...)
}

// releaseStale removes everything of an attachment whose container is
// gone: host veth, addresses (the IPAM plugin's DEL on its behalf),
// masquerade and spoof state, record last.
func releaseStale(ctx context.Context, conf *config.Bridge, stdin []byte, store state.Store, o link.Owner) error {
	errs := []error{link.DeleteHostVeth(link.HostVethName(o))}
	if conf.IPAMConf.Type != "" {
		errs = append(errs, ipam.ReleaseFor(ctx, conf.IPAMConf.Type, stdin, o.ContainerID, o.IfName))
	}
	if conf.MacSpoofChk {
		errs = append(errs, spoof.Delete(spoofOwner(o)))
	}
	errs = append(errs, deleteMasq(natOwner(o)))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return store.Delete(o.ContainerID, o.IfName)
}
