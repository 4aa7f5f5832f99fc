// Package portmapcmd is the portmap plugin's ADD, DEL, CHECK, GC and
// STATUS: host port → container port DNAT, each host port held by one
// container at a time (pkg/hostport keeps that rule). Each command opens
// the host's network namespace once and does everything there through that
// handle: in it, the nftables table inet berth-portmap or the iptables nat
// chains, route_localnet sysctls, conntrack entries of mapped UDP ports and
// probe sockets; files: the reservations under the config's dataDir
// (/run/berth/portmap).
package portmapcmd

import (
	"context"
	"io"
	"os"
	"strings"
	"syscall"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// Add is the ADD command, in the host namespace.
func Add(ctx context.Context, args *skel.CmdArgs, out io.Writer) error {
	return inHost(func(host *netns.NS) error { return add(ctx, host, args, out) })
}

// Del is the DEL command, in the host namespace.
func Del(ctx context.Context, args *skel.CmdArgs) error {
	return inHost(func(host *netns.NS) error { return del(ctx, host, args) })
}

// Check is the CHECK command, in the host namespace.
func Check(ctx context.Context, args *skel.CmdArgs) error {
	return inHost(func(host *netns.NS) error { return check(ctx, host, args) })
}

// GC is the GC command, in the host namespace.
func GC(ctx context.Context, args *skel.CmdArgs) error {
	return inHost(func(host *netns.NS) error { return gc(ctx, host, args) })
}

// Status is the STATUS command, in the host namespace.
func Status(ctx context.Context, args *skel.CmdArgs) error {
	return inHost(func(host *netns.NS) error { return status(ctx, host, args) })
}

// inHost runs a command with the host namespace (the one the plugin was
// started in) opened once.
func inHost(cmd func(host *netns.NS) error) error {
	host, err := netns.Host()
	if err != nil {
		return err
	}
	defer host.Close()
	return cmd(host)
}

// load parses the config and validates the attachment every command but
// GC and STATUS acts for.
func load(args *skel.CmdArgs) (*config.Portmap, owner.Owner, error) {
	conf, err := config.ParsePortmap(args.StdinData)
	if err != nil {
		return nil, owner.Owner{}, err
	}
	o, err := config.Attachment(conf.Name, args.ContainerID, args.IfName)
	if err != nil {
		return nil, owner.Owner{}, err
	}
	return conf, o, nil
}

// backendOf is the config's backend, or what host's NAT already uses.
func backendOf(host *netns.NS, conf *config.Portmap) string {
	if conf.Backend != nil {
		return *conf.Backend
	}
	return hostport.DefaultBackend(host)
}

// crashPoint kills the plugin with SIGKILL at the named point of ADD when
// CNI_ARGS has BERTH_TEST_KILL=<point>: the tests' way to leave the state
// of a plugin killed mid-ADD (no deferred undo runs, as with kill -9).
// Runtimes never set it.
func crashPoint(args *skel.CmdArgs, point string) {
	for _, kv := range strings.Split(args.Args, ";") {
		if kv == "BERTH_TEST_KILL="+point {
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {}
		}
	}
}
