package config

import (
	"encoding/json"
	"errors"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// DefaultOverlayStateDir is where the overlay node agent writes, and the
// plugin reads, the host's state of each overlay network.
const DefaultOverlayStateDir = "/run/berth/overlay"

// Overlay is a validated config of the overlay plugin. It is a bridge
// config without the keys the overlay decides (ipam: addresses come from
// the host's leased subnet; isGateway and isDefaultGateway: the bridge is
// always the containers' gateway) plus two of its own. Every other bridge
// key (bridge, mtu, ipMasq, hairpinMode, macspoofchk, dataDir, …) is
// passed to the bridge code and checked there.
type Overlay struct {
	types.NetConf
	// OverlayNetwork is the agent's -network; default: the CNI network name.
	OverlayNetwork string `json:"overlayNetwork,omitempty"`
	// StateDir is the agent's -state-dir; default DefaultOverlayStateDir.
	StateDir string `json:"stateDir,omitempty"`
	// DataDir holds the attachment records and, under "ipam", the address
	// leases; default DefaultDataDir.
	DataDir string `json:"dataDir,omitempty"`
	MTU     int    `json:"mtu,omitempty"`

	IsGW        *bool           `json:"isGateway,omitempty"`
	IsDefaultGW *bool           `json:"isDefaultGateway,omitempty"`
	IPAM        json.RawMessage `json:"ipam,omitempty"`
}

// ParseOverlay decodes and validates the overlay's own keys.
func ParseOverlay(stdin []byte) (*Overlay, error) {
	c := &Overlay{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, decodeError(err)
	}
	if err := ValidateNetworkName(c.Name); err != nil {
		return nil, err
	}
	if c.OverlayNetwork == "" {
		c.OverlayNetwork = c.Name
	} else if err := validateOverlayNetwork(c.OverlayNetwork); err != nil {
		return nil, err
	}
	switch {
	case c.StateDir == "":
		c.StateDir = DefaultOverlayStateDir
	case !filepath.IsAbs(c.StateDir):
		return nil, cnierr.Field("stateDir", c.StateDir, "must be an absolute path")
	}
	var err error
	if c.DataDir, err = dataDir(c.DataDir); err != nil {
		return nil, err
	}
	if err := validateMTU(c.MTU); err != nil {
		return nil, err
	}
	if len(c.IPAM) > 0 && string(c.IPAM) != "null" {
		return nil, cnierr.Field("ipam", string(c.IPAM), "is not accepted: overlay containers get addresses from the host's leased subnet")
	}
	if c.IsGW != nil && !*c.IsGW {
		return nil, cnierr.Field("isGateway", false, "is not accepted: the bridge is always the containers' gateway on an overlay")
	}
	if c.IsDefaultGW != nil && !*c.IsDefaultGW {
		return nil, cnierr.Field("isDefaultGateway", false, "is not accepted: the overlay's containers reach the outside through their host")
	}
	return c, nil
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
