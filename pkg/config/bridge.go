package config

import (
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// DefaultBridge is the bridge name when the config names none (as upstream).
const DefaultBridge = "cni0"

// DefaultDataDir is where berth keeps attachment records.
const DefaultDataDir = "/var/lib/berth"

// Bridge is a validated config of the bridge plugin: upstream's keys plus
// berth's own (marked berth-only in the README).
type Bridge struct {
	types.NetConf
	BrName                    string      `json:"bridge"`
	IsGW                      bool        `json:"isGateway"`
	IsDefaultGW               bool        `json:"isDefaultGateway"`
	ForceAddress              bool        `json:"forceAddress"`
	IPMasq                    bool        `json:"ipMasq"`
	IPMasqBackend             *string     `json:"ipMasqBackend,omitempty"`
	MTU                       int         `json:"mtu"`
	HairpinMode               bool        `json:"hairpinMode"`
	PromiscMode               bool        `json:"promiscMode"`
	Vlan                      int         `json:"vlan"`
	VlanTrunk                 []VlanTrunk `json:"vlanTrunk,omitempty"`
	PreserveDefaultVlan       bool        `json:"preserveDefaultVlan"`
	MacSpoofChk               bool        `json:"macspoofchk,omitempty"`
	EnableDad                 bool        `json:"enabledad,omitempty"`
	DisableContainerInterface bool        `json:"disableContainerInterface,omitempty"`
	PortIsolation             bool        `json:"portIsolation,omitempty"`

	// DataDir (berth-only) holds attachment records, default /var/lib/berth.
	DataDir string `json:"dataDir,omitempty"`

	Args          argsMAC    `json:"args,omitempty"`
	RuntimeConfig runtimeMAC `json:"runtimeConfig,omitempty"`

	// Derived by ParseBridge.
	IPAMConf IPAM             `json:"-"`
	MAC      net.HardwareAddr `json:"-"` // requested container MAC, or nil
	Vlans    []int            `json:"-"` // trunk VLANs, sorted, unique
}

// VlanTrunk is one entry of vlanTrunk: an id, or a minID..maxID range.
type VlanTrunk struct {
	MinID *int `json:"minID,omitempty"`
	MaxID *int `json:"maxID,omitempty"`
	ID    *int `json:"id,omitempty"`
}

// ParseBridge decodes and validates a bridge config and the CNI_ARGS string.
// The MAC is taken, lowest to highest priority, from CNI_ARGS MAC,
// args.cni.mac and runtimeConfig.mac, as upstream does.
func ParseBridge(stdin []byte, cniArgs string) (*Bridge, error) {
	return parseBridge(stdin, cniArgs, Bridge{BrName: DefaultBridge})
}

// parseBridge is ParseBridge with the values of keys the config does not
// set taken from defaults.
func parseBridge(stdin []byte, cniArgs string, defaults Bridge) (*Bridge, error) {
	c := &defaults
	var err error
	if c.IPAMConf, err = decodeConfig(stdin, c, &c.NetConf); err != nil {
		return nil, err
	}
	if err := ValidateLinkName("bridge", c.BrName); err != nil {
		return nil, err
	}
	if c.IsDefaultGW {
		c.IsGW = true
	}
	if err := validateMTU(c.MTU); err != nil {
		return nil, err
	}
	if c.HairpinMode && c.PromiscMode {
		return nil, cnierr.Field("hairpinMode", true, "cannot be combined with promiscMode: true (the bridge would deliver each frame twice)")
	}
	if c.IPAMConf.Type != "" && c.DisableContainerInterface {
		return nil, cnierr.Field("disableContainerInterface", true, "cannot be used with ipam (type %q): an address needs an interface that is up", c.IPAMConf.Type)
	}
	if c.IPMasqBackend != nil && *c.IPMasqBackend != "nftables" && *c.IPMasqBackend != "iptables" {
		return nil, cnierr.Field("ipMasqBackend", *c.IPMasqBackend, "must be \"nftables\" or \"iptables\"")
	}
	if c.Vlan < 0 || c.Vlan > 4094 {
		return nil, cnierr.Field("vlan", c.Vlan, "must be between 0 and 4094")
	}
	if c.Vlans, err = trunkVlans(c.VlanTrunk); err != nil {
		return nil, err
	}
	// The gateway of a VLAN lives on "<bridge>.<vlan>", a link name too.
	if gw := c.BrName + "." + strconv.Itoa(c.Vlan); c.IsGW && c.Vlan != 0 && len(gw) > MaxIfName {
		return nil, cnierr.Field("bridge", c.BrName, "with vlan %d and isGateway the gateway interface %q would pass the kernel's %d-byte name limit", c.Vlan, gw, MaxIfName)
	}
	if c.DataDir, err = dataDir(c.DataDir); err != nil {
		return nil, err
	}
	c.MAC, err = macRequest{CNIArgs: cniArgs, ArgsCNI: c.Args.Cni.Mac, Runtime: c.RuntimeConfig.Mac}.parse()
	if err != nil {
		return nil, err
	}
	return c, nil
}

// VlanFiltering reports whether the config needs bridge VLAN filtering.
func (c *Bridge) VlanFiltering() bool { return c.Vlan != 0 || len(c.Vlans) > 0 }

func trunkVlans(trunk []VlanTrunk) ([]int, error) {
	set := map[int]bool{}
	check := func(i int, key string, v int) error {
		if v < 1 || v > 4094 {
			return cnierr.Field(fmt.Sprintf("vlanTrunk[%d].%s", i, key), v, "must be between 1 and 4094")
		}
		return nil
	}
	for i, t := range trunk {
		switch {
		case t.MinID != nil && t.MaxID != nil:
			if err := check(i, "minID", *t.MinID); err != nil {
				return nil, err
			}
			if err := check(i, "maxID", *t.MaxID); err != nil {
				return nil, err
			}
			if *t.MaxID < *t.MinID {
				return nil, cnierr.Field(fmt.Sprintf("vlanTrunk[%d].maxID", i), *t.MaxID, "is below minID %d", *t.MinID)
			}
			for v := *t.MinID; v <= *t.MaxID; v++ {
				set[v] = true
			}
		case t.MinID != nil:
			return nil, cnierr.Field(fmt.Sprintf("vlanTrunk[%d].maxID", i), nil, "minID needs maxID")
		case t.MaxID != nil:
			return nil, cnierr.Field(fmt.Sprintf("vlanTrunk[%d].minID", i), nil, "maxID needs minID")
		}
		if t.ID != nil {
			if err := check(i, "id", *t.ID); err != nil {
				return nil, err
			}
			set[*t.ID] = true
		}
	}
	if len(set) == 0 {
		return nil, nil
	}
	vlans := make([]int, 0, len(set))
	for v := range set {
		vlans = append(vlans, v)
	}
	sort.Ints(vlans)
	return vlans, nil
}

// decodeError turns a JSON error into a code-7 error naming the field where
// the decoder can tell it.
func decodeError(err error) error {
	if te, ok := err.(*json.UnmarshalTypeError); ok && te.Field != "" {
		return cnierr.Field(te.Field, te.Value, "wrong type: want %s", te.Type)
	}
	return &types.Error{Code: types.ErrDecodingFailure, Msg: fmt.Sprintf("decode network config: %v", err)}
}
