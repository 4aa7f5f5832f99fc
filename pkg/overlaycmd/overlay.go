// Package overlaycmd is the overlay plugin's ADD, DEL, CHECK, GC and
// STATUS: containers of one network spread over many hosts, joined by
// VXLAN. The node agent, berth-overlayd, leases this host's subnet and
// programs the peers; these commands put each container on the host's
// overlay bridge with an address from that subnet, through the bridge
// commands (pkg/bridgecmd) run over a bridge config derived, as a typed
// value, from the overlay config and the agent's state file. It touches
// what pkg/bridgecmd touches, and reads <stateDir>/<network>.json.
package overlaycmd

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/bridgecmd"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/overlay"
)

// loaded is one command's view: the config parsed once and the agent's
// state read once.
type loaded struct {
	conf  *config.Overlay
	local overlay.Local
	// stateErr is why the agent's state could not be read (none: nil).
	stateErr error
	net      *bridgecmd.Net
}

// load parses the config and reads the agent's state, and derives the
// network the bridge commands run over. DEL and GC work when the agent is
// gone (its state file stays) or never ran (the derived config has no
// IPAM then).
func load(args *skel.CmdArgs) (*loaded, error) {
	conf, err := config.ParseOverlay(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	l := &loaded{conf: conf}
	l.local, l.stateErr = overlay.ReadLocal(conf.StateDir, conf.OverlayNetwork)
	if l.stateErr != nil && !errors.Is(l.stateErr, overlay.ErrNoAgent) {
		return nil, l.stateErr
	}
	b, ipamConf, err := conf.OnHost(config.OverlayHost{CIDR: l.local.CIDR, Subnet: l.local.Subnet, Gateway: l.local.Gateway, MTU: l.local.MTU})
	if err != nil {
		return nil, err
	}
	l.net = &bridgecmd.Net{Conf: b, IPAMConf: ipamConf, MasqExempt: l.local.CIDR}
	return l, nil
}

// bridge is the bridge commands over l's network.
func (l *loaded) bridge() bridgecmd.Plugin {
	return bridgecmd.Plugin{Name: "overlay", Load: func(*skel.CmdArgs) (*bridgecmd.Net, error) { return l.net, nil }}
}

// ready returns nil when the agent of the network runs and is ready, else
// an error with code.
func (l *loaded) ready(code uint) error {
	network := l.conf.OverlayNetwork
	if l.stateErr != nil {
		return cnierr.WithCode(code, fmt.Errorf("overlay network %q not ready on this host: %w", network, l.stateErr))
	}
	if ok, why := l.local.Live(l.conf.StateDir); !ok {
		return cnierr.WithCode(code, fmt.Errorf("overlay network %q not ready on this host: %s", network, why))
	}
	return nil
}

// Add is the ADD command. It answers "try again later" (11) while the
// agent is not ready: the host has no lease, or its peers are not
// programmed yet.
func Add(ctx context.Context, args *skel.CmdArgs, out io.Writer) error {
	l, err := load(args)
	if err != nil {
		return err
	}
	if err := l.ready(types.ErrTryAgainLater); err != nil {
		return err
	}
	return l.bridge().Add(ctx, args, out)
}

// Check is the CHECK command: a host whose agent is gone is reported
// before the container's state.
func Check(ctx context.Context, args *skel.CmdArgs) error {
	l, err := load(args)
	if err != nil {
		return err
	}
	if err := l.ready(types.ErrTryAgainLater); err != nil {
		return err
	}
	return l.bridge().Check(ctx, args)
}

// Status is the STATUS command: 50 while the agent is not ready, then the
// bridge commands' checks (masquerade backend, IPAM plugin).
func Status(ctx context.Context, args *skel.CmdArgs) error {
	l, err := load(args)
	if err != nil {
		return err
	}
	if err := l.ready(cnierr.CodeNotAvailable); err != nil {
		return err
	}
	return l.bridge().Status(ctx, args)
}

// Del is the DEL command.
func Del(ctx context.Context, args *skel.CmdArgs) error {
	l, err := load(args)
	if err != nil {
		return err
	}
	return l.bridge().Del(ctx, args)
}

// GC is the GC command.
func GC(ctx context.Context, args *skel.CmdArgs) error {
	l, err := load(args)
	if err != nil {
		return err
	}
	return l.bridge().GC(ctx, args)
}
