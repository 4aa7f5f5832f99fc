package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"net/netip"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// DefaultOverlayStateDir is where the overlay node agent writes, and the
// plugin reads, the host's state of each overlay network.
const DefaultOverlayStateDir = "/run/berth/overlay"

// OverlayBridgePrefix starts the default bridge name of an overlay
// network, followed by 10 hex digits of the network name's SHA-256: an
// API once released.
const OverlayBridgePrefix = "bov"

// OverlayBridgeName is the default bridge of an overlay network.
func OverlayBridgeName(network string) string {
	sum := sha256.Sum256([]byte(network))
	return OverlayBridgePrefix + hex.EncodeToString(sum[:])[:10]
}

// Overlay is a validated config of the overlay plugin: a bridge config
// without the keys the overlay decides (ipam: addresses come from the
// host's leased subnet; isGateway and isDefaultGateway: the bridge is
// always the containers' gateway), with the overlay's defaults (its own
// bridge, masquerade and hairpin on), plus two keys of its own. Every
// other bridge key (bridge, mtu, ipMasq, hairpinMode, macspoofchk,
// dataDir, …) means what it means to the bridge plugin.
type Overlay struct {
	// Bridge is the bridge config without IPAM; OnHost completes it.
	Bridge *Bridge
	// OverlayNetwork is the agent's -network; default: the CNI network name.
	OverlayNetwork string
	// StateDir is the agent's -state-dir; default DefaultOverlayStateDir.
	StateDir string

	// passed on to the IPAM plugin as the runtime sent them
	args, runtimeConfig json.RawMessage
}

// overlayKeys are the keys the overlay reads itself.
type overlayKeys struct {
	OverlayNetwork string          `json:"overlayNetwork,omitempty"`
	StateDir       string          `json:"stateDir,omitempty"`
	IsGW           *bool           `json:"isGateway,omitempty"`
	IsDefaultGW    *bool           `json:"isDefaultGateway,omitempty"`
	IPAM           json.RawMessage `json:"ipam,omitempty"`
	Args           json.RawMessage `json:"args,omitempty"`
	RuntimeConfig  json.RawMessage `json:"runtimeConfig,omitempty"`
}

// ParseOverlay decodes and validates an overlay config and the CNI_ARGS
// string: the overlay's own keys, then the bridge keys with the overlay's
// defaults, checked as the bridge plugin checks them.
func ParseOverlay(stdin []byte, cniArgs string) (*Overlay, error) {
	var k overlayKeys
	if err := json.Unmarshal(stdin, &k); err != nil {
		return nil, decodeError(err)
	}
	var nc types.NetConf
	if err := json.Unmarshal(stdin, &nc); err != nil {
		return nil, decodeError(err)
	}
	if err := ValidateNetworkName(nc.Name); err != nil {
		return nil, err
	}
	o := &Overlay{OverlayNetwork: k.OverlayNetwork, StateDir: k.StateDir, args: k.Args, runtimeConfig: k.RuntimeConfig}
	if o.OverlayNetwork == "" {
		o.OverlayNetwork = nc.Name
	} else if err := validateOverlayNetwork(o.OverlayNetwork); err != nil {
		return nil, err
	}
	switch {
	case o.StateDir == "":
		o.StateDir = DefaultOverlayStateDir
	case !filepath.IsAbs(o.StateDir):
		return nil, cnierr.Field("stateDir", o.StateDir, "must be an absolute path")
	}
	if len(k.IPAM) > 0 && string(k.IPAM) != "null" {
		return nil, cnierr.Field("ipam", string(k.IPAM), "is not accepted: overlay containers get addresses from the host's leased subnet")
	}
	if k.IsGW != nil && !*k.IsGW {
		return nil, cnierr.Field("isGateway", false, "is not accepted: the bridge is always the containers' gateway on an overlay")
	}
	if k.IsDefaultGW != nil && !*k.IsDefaultGW {
		return nil, cnierr.Field("isDefaultGateway", false, "is not accepted: the overlay's containers reach the outside through their host")
	}
	defaults := Bridge{BrName: OverlayBridgeName(o.OverlayNetwork), IPMasq: true, HairpinMode: true}
	b, err := parseBridge(stdin, cniArgs, defaults)
	if err != nil {
		return nil, err
	}
	b.IsGW, b.IsDefaultGW = true, true
	o.Bridge = b
	return o, nil
}

// OverlayHost is what the agent says of this host (the Local file's
// values the plugin needs).
type OverlayHost struct {
	CIDR    netip.Prefix // the cluster network
	Subnet  netip.Prefix // this host's lease; invalid: no agent ever ran
	Gateway netip.Addr   // the bridge's address in Subnet
	MTU     int          // 0: not known
}

// OnHost completes o's bridge config for host h: host-local IPAM on the
// leased subnet with a route to the whole cluster network, its leases
// under dataDir/overlay-ipam, and the agent's MTU unless the config sets a
// lower one. It returns the bridge config and the network config the IPAM
// plugin is handed. With no subnet (DEL after the agent never ran) the
// bridge config has no IPAM: no ADD can have got an address without it.
func (o *Overlay) OnHost(h OverlayHost) (*Bridge, []byte, error) {
	b := *o.Bridge
	switch {
	case h.MTU == 0:
	case b.MTU > h.MTU:
		return nil, nil, cnierr.Field("mtu", b.MTU, "is above the overlay's MTU on this host, %d (the underlay's less the VXLAN overhead)", h.MTU)
	case b.MTU == 0:
		b.MTU = h.MTU
	}
	if !h.Subnet.IsValid() {
		return &b, nil, nil
	}
	r := ipRange{Subnet: h.Subnet.String()}
	if h.Gateway.IsValid() {
		r.Gateway = h.Gateway.String()
	}
	b.IPAMConf = IPAM{Type: "host-local", Ranges: [][]ipRange{{r}}, DataDir: filepath.Join(b.DataDir, "overlay-ipam")}
	if h.CIDR.IsValid() {
		b.IPAMConf.Routes = []ipamRoute{{Dst: h.CIDR.String()}}
	}
	if err := b.IPAMConf.Validate(); err != nil {
		return nil, nil, err
	}
	conf, err := json.Marshal(ipamNetConf{
		CNIVersion: b.CNIVersion, Name: b.Name, Type: b.Type,
		IPAM: b.IPAMConf, Args: o.args, RuntimeConfig: o.runtimeConfig,
	})
	if err != nil {
		return nil, nil, err
	}
	return &b, conf, nil
}

// ipamNetConf is the network config an IPAM plugin is handed: what it
// reads of a plugin's config (its ipam section, the requested addresses
// in args and runtimeConfig).
type ipamNetConf struct {
	CNIVersion    string          `json:"cniVersion,omitempty"`
	Name          string          `json:"name"`
	Type          string          `json:"type,omitempty"`
	IPAM          IPAM            `json:"ipam"`
	Args          json.RawMessage `json:"args,omitempty"`
	RuntimeConfig json.RawMessage `json:"runtimeConfig,omitempty"`
}

// validateOverlayNetwork checks overlayNetwork: it names the agent's state
// file, so it follows the network name's rules.
func validateOverlayNetwork(name string) error {
	var fe *cnierr.FieldError
	if err := ValidateNetworkName(name); errors.As(err, &fe) {
		return cnierr.Field("overlayNetwork", name, "%s", fe.Reason)
	} else if err != nil {
		return err
	}
	return nil
}
