package config

import (
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// PrevResult decodes the config's prevResult (as CHECK needs it) into the
// current result version. A missing or malformed one is a config error.
func PrevResult(conf *types.NetConf) (*current.Result, error) {
	if conf.RawPrevResult == nil {
		return nil, cnierr.Field("prevResult", nil, "CHECK needs the result of the ADD")
	}
	if err := version.ParsePrevResult(conf); err != nil {
		return nil, cnierr.Field("prevResult", "", "%v", err)
	}
	res, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return nil, cnierr.Field("prevResult", "", "%v", err)
	}
	return res, nil
}
