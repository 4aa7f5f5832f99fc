package bridgecmd

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/owner"
)

// GC is the GC command: it removes every attachment of this network that
// is not in cni.dev/valid-attachments: its host veth, its addresses
// (through the IPAM plugin's DEL on its behalf), its masquerade state and
// its record. Stale attachments are found in all three places berth tags:
// records, host veth aliases and masquerade element comments, so a
// half-done ADD is found too.
func (p Plugin) GC(ctx context.Context, args *skel.CmdArgs) error {
	n, err := p.Load(args)
	if err != nil {
		return err
	}
	c, err := p.open(args, n)
	if err != nil {
		return err
	}
	defer c.close()
	network := c.conf.Name
	valid := map[owner.Owner]bool{}
	for _, a := range c.conf.ValidAttachments {
		o := owner.Owner{Network: network, ContainerID: a.ContainerID, IfName: a.IfName}
		valid[o] = true
		// nat.List reports over-long container IDs in their stored
		// (shortened) form: a valid attachment must match either form.
		valid[nat.StoredOwner(o)] = true
	}
	stale := map[owner.Owner]bool{}
	var errs []error
	recs, err := c.store.List()
	errs = append(errs, err)
	for _, r := range recs {
		stale[owner.Owner{Network: network, ContainerID: r.ContainerID, IfName: r.IfName}] = true
	}
	veths, err := c.k.ListHostVeths(network)
	errs = append(errs, err)
	for _, v := range veths {
		stale[v.Owner] = true
	}
	for _, name := range nat.Backends {
		if !nat.Available(name) {
			continue
		}
		b, err := c.k.Masq(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		ms, err := b.List(network)
		errs = append(errs, err)
		for _, m := range ms {
			stale[owner.Owner{Network: network, ContainerID: m.Owner.ContainerID, IfName: m.Owner.IfName}] = true
		}
	}
	// In a fixed order, so that what GC does reads the same every time.
	for _, o := range slices.SortedFunc(maps.Keys(stale), func(a, b owner.Owner) int { return strings.Compare(a.String(), b.String()) }) {
		if !valid[o] {
			errs = append(errs, c.releaseStale(ctx, o))
		}
	}
	if t := c.conf.IPAMConf.Type; t != "" {
		errs = append(errs, c.ipam.GC(ctx, t, n.IPAMConf, args.Path))
	}
	return errors.Join(errs...)
}

// releaseStale removes everything of an attachment whose container is
// gone: host veth, addresses (the IPAM plugin's DEL on its behalf),
// masquerade and spoof state, record last.
func (c *cmd) releaseStale(ctx context.Context, o owner.Owner) error {
	errs := []error{c.k.DeleteHostVeth(o.HostVeth())}
	if t := c.conf.IPAMConf.Type; t != "" {
		errs = append(errs, c.ipam.ReleaseFor(ctx, t, c.net.IPAMConf, c.args.Path, o.ContainerID, o.IfName))
	}
	if c.conf.MacSpoofChk {
		errs = append(errs, c.k.DeleteSpoof(o, nil))
	}
	errs = append(errs, c.deleteMasq(o, nil))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.store.Delete(o.ContainerID, o.IfName)
}
