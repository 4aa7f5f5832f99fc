package main

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/berth-cni/berth/internal/lab"
)

// overlayNet is the demo's overlay network: its name and cluster network.
const (
	overlayNet  = "berth-overlay"
	overlayCIDR = "10.244.0.0/16"
)

// overlay shows two namespaced hosts, each running berth-overlayd on a
// shared file store, and a container on each talking across the VXLAN
// overlay with their own addresses, while traffic out of the cluster is
// masqueraded.
func (d *demo) overlay(ctx context.Context) error {
	d.out.section("An overlay network across two hosts (VXLAN; berth-overlayd on each host learns the other from a shared store)")
	u, err := lab.NewUnderlay(ctx, "bdemo")
	if !d.out.check("created an \"underlay\" namespace (plays the LAN between hosts, and the outside)", err) {
		return err
	}
	d.underlay = u
	store := filepath.Join(d.tmp, "overlay-store")
	var cs []*attached
	for i := 1; i <= 2; i++ {
		host, err := u.AddHost(ctx, i)
		if !d.out.check(fmt.Sprintf("created host h%d (%s), %s on the underlay", i, host.Name, lab.HostAddr(i)), err) {
			return err
		}
		dir := filepath.Join(d.tmp, fmt.Sprintf("overlay-h%d", i))
		stateDir := filepath.Join(dir, "state")
		args := []string{"-cidr", overlayCIDR, "-vni", "42", "-node", fmt.Sprintf("h%d", i),
			"-store", "file", "-store-dir", store, "-lease-ttl", "10s", "-listen", ""}
		agent, err := lab.StartAgent(host, filepath.Join(d.bin, "berth-overlayd"), overlayNet, stateDir, args, d.log)
		if err != nil {
			d.out.fail(fmt.Sprintf("h%d: start berth-overlayd", i), err)
			return err
		}
		l, err := agent.WaitReady(ctx)
		what := fmt.Sprintf("h%d: berth-overlayd %s", i, args[:4])
		if !d.out.check(fmt.Sprintf("%s ready: leased %s, VXLAN device %s (vni 42), MTU %d", what, l.Subnet, l.Device, l.MTU), err) {
			return err
		}
		conf, err := lab.LoadConflist(filepath.Join(d.confDir, "overlay.conflist"), lab.ConflistOptions{
			DataDir:    filepath.Join(dir, "berth"),
			PortmapDir: filepath.Join(dir, "ports"),
			Edit: func(p map[string]any) {
				if p["type"] == "overlay" {
					p["stateDir"] = stateDir
				}
			},
		})
		if err != nil {
			d.out.fail("load overlay.conflist", err)
			return err
		}
		r := lab.NewRunner(host, []string{d.bin}, filepath.Join(dir, "cache"), d.log)
		c, err := d.attachWith(ctx, fmt.Sprintf("o%d", i), conf, r, u.AddNS)
		if err != nil {
			return err
		}
		cs = append(cs, c)
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	o1, o2 := cs[0], cs[1]
	d.out.section("Containers on different hosts talk over the overlay, with their own addresses")
	d.ping(ctx, o1, o2.name, o2.v4)
	d.ping(ctx, o2, o1.name, o1.v4)
	d.tcpSeen(ctx, o1, o2.name, o2.ns, o2.v4, o1.v4, o1.name+"'s own address: no masquerade inside the cluster")
	if ctx.Err() != nil {
		return ctx.Err()
	}
	d.out.section("Out of the cluster, an overlay container is masqueraded by its host")
	d.tcpSeen(ctx, o2, "outside", u.NS, lab.UnderlayGateway.Addr(), lab.HostAddr(2).Addr(), "h2's address")
	return ctx.Err()
}
