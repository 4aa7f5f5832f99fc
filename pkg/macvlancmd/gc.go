package macvlancmd

import (
	"context"
	"errors"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/state"
)

// GC is the GC command: it removes every attachment of this network that is not in
// cni.dev/valid-attachments: its macvlan (in the namespace its record
// names, if that still exists; a macvlan dies with its namespace
// otherwise), its addresses (through the IPAM plugin's DEL on its behalf),
// its place on the master (shim routes, promiscuous mode) and its record.
// Stale attachments are found in attachment records and in the per-master
// state, so a half-done ADD is found too.
func GC(ctx context.Context, args *skel.CmdArgs) error {
	c, err := begin(args, false)
	if err != nil {
		return err
	}
	defer c.close()
	conf, host := c.conf, c.host
	valid := map[owner.Owner]bool{}
	for _, a := range conf.ValidAttachments {
		valid[owner.Owner{Network: conf.Name, ContainerID: a.ContainerID, IfName: a.IfName}] = true
	}
	store := state.Open(conf.DataDir, conf.Name)
	ms := openMasters(conf.DataDir, host)
	netnsOf := map[owner.Owner]string{}
	recs, err := store.List()
	errs := []error{err}
	for _, r := range recs {
		netnsOf[owner.Owner{Network: conf.Name, ContainerID: r.ContainerID, IfName: r.IfName}] = r.Netns
	}
	users, err := ms.usersOf(conf.Name)
	errs = append(errs, err)
	for _, o := range users {
		if _, ok := netnsOf[o]; !ok {
			netnsOf[o] = ""
		}
	}
	for o, netns := range netnsOf {
		if valid[o] {
			continue
		}
		errs = append(errs, deleteIn(netns, o))
		if conf.IPAMConf.Type != "" {
			errs = append(errs, ipam.ReleaseFor(ctx, conf.IPAMConf.Type, args.StdinData, args.Path, o.ContainerID, o.IfName))
		}
		errs = append(errs, ms.release(o), store.Delete(o.ContainerID, o.IfName))
	}
	if conf.IPAMConf.Type != "" {
		errs = append(errs, ipam.GC(ctx, conf.IPAMConf.Type, args.StdinData, args.Path))
	}
	return errors.Join(errs...)
}
