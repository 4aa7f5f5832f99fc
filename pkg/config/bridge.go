package config

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"sort"

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

	Args struct {
		Cni struct {
			Mac string `json:"mac,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`
	RuntimeConfig struct {
		Mac string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`

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

// macArgs is the part of CNI_ARGS the bridge honours (as upstream: MAC;
// IP is read by the IPAM plugin itself).
type macArgs struct {
	types.CommonArgs
	MAC types.UnmarshallableString `json:"mac,omitempty"`
	IP  types.UnmarshallableString `json:"ip,omitempty"`
}

// ParseBridge decodes and validates a bridge config and the CNI_ARGS string.
// The MAC is taken, lowest to highest priority, from CNI_ARGS MAC,
// args.cni.mac and runtimeConfig.mac, as upstream does.
func ParseBridge(stdin []byte, cniArgs string) (*Bridge, error) {
	c := &Bridge{BrName: DefaultBridge}
	var raw struct {
		IPAM json.RawMessage `json:"ipam"`
	}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, decodeError(err)
	}
	if err := json.Unmarshal(stdin, &raw); err != nil {
		return nil, decodeError(err)
	}
	if err := ValidateNetworkName(c.Name); err != nil {
		return nil, err
	}
	if err := ValidateLinkName("bridge", c.BrName); err != nil {
		return nil, err
	}
	ipam, err := decodeIPAM(raw.IPAM)
	if err != nil {
		return nil, err
	}
	c.IPAMConf = ipam
	if c.IsDefaultGW {
		c.IsGW = true
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return nil, cnierr.Field("mtu", c.MTU, "must be between 68 and 65535")
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
	if c.DataDir == "" {
		c.DataDir = DefaultDataDir
	} else if !filepath.IsAbs(c.DataDir) {
		return nil, cnierr.Field("dataDir", c.DataDir, "must be an absolute path")
	}
	if err := c.parseMAC(cniArgs); err != nil {
		return nil, err
	}
	return c, nil
}

// VlanFiltering reports whether the config needs bridge VLAN filtering.
func (c *Bridge) VlanFiltering() bool { return c.Vlan != 0 || len(c.Vlans) > 0 }

func (c *Bridge) parseMAC(cniArgs string) error {
	field, mac := "", ""
	if cniArgs != "" {
		var e macArgs
		if err := types.LoadArgs(cniArgs, &e); err != nil {
			return cnierr.Env("CNI_ARGS", cniArgs, err, "cannot parse")
		}
		if e.MAC != "" {
			field, mac = "CNI_ARGS MAC", string(e.MAC)
		}
	}
	if c.Args.Cni.Mac != "" {
		field, mac = "args.cni.mac", c.Args.Cni.Mac
	}
	if c.RuntimeConfig.Mac != "" {
		field, mac = "runtimeConfig.mac", c.RuntimeConfig.Mac
	}
	if mac == "" {
		return nil
	}
	hw, err := ParseMAC(field, mac)
	if err != nil {
		return err
	}
	c.MAC = hw
	return nil
}

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
