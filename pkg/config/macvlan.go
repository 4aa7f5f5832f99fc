package config

import (
	"net"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// Macvlan modes, as upstream names them.
const (
	ModeBridge   = "bridge"
	ModePrivate  = "private"
	ModeVEPA     = "vepa"
	ModePassthru = "passthru"
)

// Macvlan is a validated config of the macvlan plugin: upstream's keys plus
// berth's own (marked berth-only in the README).
type Macvlan struct {
	types.NetConf
	// Master is the parent interface; empty: the interface of the
	// default route, looked up at ADD time (not here: parsing is pure).
	Master          string `json:"master,omitempty"`
	Mode            string `json:"mode,omitempty"`
	MTU             int    `json:"mtu,omitempty"`
	Mac             string `json:"mac,omitempty"`
	LinkInContainer bool   `json:"linkInContainer,omitempty"`
	BcQueueLen      uint32 `json:"bcqueuelen,omitempty"`

	// Promisc (berth-only) puts the master into promiscuous mode while a
	// macvlan of this config is on it.
	Promisc bool `json:"promisc,omitempty"`
	// HostShim (berth-only) gives the host a way to its macvlan
	// containers: a shared host-side macvlan on the master and a host route
	// per container address.
	HostShim bool `json:"hostShim,omitempty"`
	// DataDir (berth-only) holds attachment records and per-master state,
	// default /var/lib/berth.
	DataDir string `json:"dataDir,omitempty"`

	Args          argsMAC    `json:"args,omitempty"`
	RuntimeConfig runtimeMAC `json:"runtimeConfig,omitempty"`

	// Derived by ParseMacvlan.
	IPAMConf IPAM             `json:"-"`
	MAC      net.HardwareAddr `json:"-"` // requested container MAC, or nil
}

// ParseMacvlan decodes and validates a macvlan config and the CNI_ARGS
// string. The MAC is taken, lowest to highest priority, from "mac",
// CNI_ARGS MAC, args.cni.mac and runtimeConfig.mac. Nothing about the
// master is looked up here; mtu is checked against the master's at ADD.
func ParseMacvlan(stdin []byte, cniArgs string) (*Macvlan, error) {
	c := &Macvlan{}
	var err error
	if c.IPAMConf, err = decodeConfig(stdin, c, &c.NetConf); err != nil {
		return nil, err
	}
	if c.Master != "" {
		if err := ValidateLinkName("master", c.Master); err != nil {
			return nil, err
		}
	}
	switch c.Mode {
	case "":
		c.Mode = ModeBridge
	case ModeBridge, ModePrivate, ModeVEPA, ModePassthru:
	default:
		return nil, cnierr.Field("mode", c.Mode, "must be %q, %q, %q or %q", ModeBridge, ModePrivate, ModeVEPA, ModePassthru)
	}
	if err := validateMTU(c.MTU); err != nil {
		return nil, err
	}
	if err := c.validateBerthKeys(); err != nil {
		return nil, err
	}
	if c.DataDir, err = dataDir(c.DataDir); err != nil {
		return nil, err
	}
	c.MAC, err = macRequest{Own: c.Mac, OwnField: "mac", CNIArgs: cniArgs, ArgsCNI: c.Args.Cni.Mac, Runtime: c.RuntimeConfig.Mac}.parse()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// validateBerthKeys checks promisc and hostShim against the rest: both act
// on the host's side of the master, which berth shares between containers.
func (c *Macvlan) validateBerthKeys() error {
	if c.LinkInContainer && c.Promisc {
		return cnierr.Field("promisc", true, "cannot be used with linkInContainer: the master is the container's, not shared host state")
	}
	if !c.HostShim {
		return nil
	}
	switch {
	case c.LinkInContainer:
		return cnierr.Field("hostShim", true, "cannot be used with linkInContainer: the master is not in the host's namespace")
	case c.Mode != ModeBridge:
		return cnierr.Field("hostShim", true, "needs mode %q (the shim is a macvlan too; in mode %q it cannot reach the containers)", ModeBridge, c.Mode)
	case c.IPAMConf.Type == "":
		return cnierr.Field("hostShim", true, "needs ipam: the host routes to the containers' addresses")
	}
	return nil
}
