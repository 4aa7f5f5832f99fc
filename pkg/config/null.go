package config

import (
	"encoding/json"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// Null is the config of the null plugin (Docker's "none"): a name and
// nothing else.
type Null struct {
	types.NetConf
}

// ParseNull decodes and validates a null config. An ipam section is an
// error: null gives the container no address to manage.
func ParseNull(stdin []byte) (*Null, error) {
	c := &Null{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, decodeError(err)
	}
	if err := ValidateNetworkName(c.Name); err != nil {
		return nil, err
	}
	if c.IPAM.Type != "" {
		return nil, cnierr.Field("ipam.type", c.IPAM.Type, "the null plugin gives no address; remove the ipam section")
	}
	return c, nil
}
