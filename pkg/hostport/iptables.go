package hostport

import (
	"errors"

	"github.com/berth-cni/berth/pkg/config"
)

// IPTables is the iptables datapath (not yet written).
type IPTables struct {
	conf *config.Portmap
}

func newIPTables(conf *config.Portmap) *IPTables { return &IPTables{conf: conf} }

var errNoIPT = errors.New("portmap: the iptables backend is not implemented yet; use backend \"nftables\"")

func (d *IPTables) Add(a Attachment) error    { return errNoIPT }
func (d *IPTables) Remove(a Attachment) error { return errNoIPT }
func (d *IPTables) Check(a Attachment) error  { return errNoIPT }
