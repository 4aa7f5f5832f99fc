package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/bridgecmd"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/overlay"
)

// plugin is the bridge code run over the bridge config load derives.
var plugin = bridgecmd.Plugin{Name: "overlay", Load: load}

// add refuses with "try again later" (11) while the agent is not ready:
// the host has no lease, or its peers are not programmed yet.
func add(ctx context.Context, args *skel.CmdArgs, out io.Writer) error {
	if err := ready(args, types.ErrTryAgainLater); err != nil {
		return err
	}
	return plugin.Add(ctx, args, out)
}

// check reports a host whose agent is gone before the container's state.
func check(ctx context.Context, args *skel.CmdArgs) error {
	if err := ready(args, types.ErrTryAgainLater); err != nil {
		return err
	}
	return plugin.Check(ctx, args)
}

// status answers 50 while the agent is not ready, then the bridge code's
// checks (masquerade backend, IPAM plugin).
func status(ctx context.Context, args *skel.CmdArgs) error {
	if err := ready(args, cnierr.CodeNotAvailable); err != nil {
		return err
	}
	return plugin.Status(ctx, args)
}

// ready returns nil when the agent of the config's overlay network runs
// and is ready, else an error with code.
func ready(args *skel.CmdArgs, code uint) error {
	conf, err := config.ParseOverlay(args.StdinData)
	if err != nil {
		return err
	}
	local, err := overlay.ReadLocal(conf.StateDir, conf.OverlayNetwork)
	if err != nil {
		return cnierr.WithCode(code, fmt.Errorf("overlay network %q not ready on this host: %w", conf.OverlayNetwork, err))
	}
	if ok, why := local.Live(conf.StateDir); !ok {
		return cnierr.WithCode(code, fmt.Errorf("overlay network %q not ready on this host: %s", conf.OverlayNetwork, why))
	}
	return nil
}

// load derives the bridge config from the overlay config and the agent's
// state. DEL and GC work when the agent is gone: its state file stays. When
// there never was one, the derived config has no IPAM (no ADD can have
// got an address without it).
func load(args *skel.CmdArgs) (*config.Bridge, *skel.CmdArgs, error) {
	conf, err := config.ParseOverlay(args.StdinData)
	if err != nil {
		return nil, nil, err
	}
	local, err := overlay.ReadLocal(conf.StateDir, conf.OverlayNetwork)
	if err != nil && !errors.Is(err, overlay.ErrNoAgent) {
		return nil, nil, err
	}
	stdin, err := bridgeStdin(args.StdinData, conf, local)
	if err != nil {
		return nil, nil, err
	}
	bc, err := config.ParseBridge(stdin, args.Args)
	if err != nil {
		return nil, nil, err
	}
	bc.MasqExempt = local.CIDR
	derived := *args
	derived.StdinData = stdin
	return bc, &derived, nil
}

// BridgePrefix starts the default bridge name of an overlay network, followed
// by 10 hex digits of the network name's SHA-256: an API once released.
const BridgePrefix = "bov"

// bridgeName is the default bridge of an overlay network.
func bridgeName(network string) string {
	sum := sha256.Sum256([]byte(network))
	return BridgePrefix + hex.EncodeToString(sum[:])[:10]
}

// bridgeStdin is the bridge config for conf on a host in state local: the
// original keys (cniVersion, name, runtimeConfig, prevResult, the bridge
// keys the user set) with the overlay's own removed, the bridge as the
// containers' gateway and default gateway, masquerade on unless turned off,
// the agent's MTU unless a lower one is set, hairpin on (for portmap's
// hairpin), and host-local IPAM on the host's leased subnet with a route to
// the whole cluster network. It is pure.
func bridgeStdin(stdin []byte, conf *config.Overlay, local overlay.Local) ([]byte, error) {
	var m map[string]json.RawMessage
	if err := json.Unmarshal(stdin, &m); err != nil {
		return nil, cnierr.WithCode(types.ErrDecodingFailure, fmt.Errorf("decode config: %w", err))
	}
	delete(m, "overlayNetwork")
	delete(m, "stateDir")
	set := func(k string, v any) {
		b, _ := json.Marshal(v) // plain values: cannot fail
		m[k] = b
	}
	setDefault := func(k string, v any) {
		if _, ok := m[k]; !ok {
			set(k, v)
		}
	}
	setDefault("bridge", bridgeName(conf.OverlayNetwork))
	set("isGateway", true)
	set("isDefaultGateway", true)
	setDefault("ipMasq", true)
	setDefault("hairpinMode", true)
	set("dataDir", conf.DataDir)
	switch {
	case local.MTU == 0:
	case conf.MTU > local.MTU:
		return nil, cnierr.Field("mtu", conf.MTU, "is above the overlay's MTU on this host, %d (the underlay's less the VXLAN overhead)", local.MTU)
	case conf.MTU == 0:
		set("mtu", local.MTU)
	}
	if local.Subnet.IsValid() {
		r := map[string]string{"subnet": local.Subnet.String()}
		if local.Gateway.IsValid() {
			r["gateway"] = local.Gateway.String()
		}
		ipam := map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{r}},
			"dataDir": filepath.Join(conf.DataDir, "overlay-ipam"),
		}
		if local.CIDR.IsValid() {
			ipam["routes"] = []map[string]string{{"dst": local.CIDR.String()}}
		}
		set("ipam", ipam)
	}
	return json.Marshal(m)
}
