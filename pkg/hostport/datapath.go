package hostport

import (
	"fmt"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/netns"
)

// Datapath forwards held host ports to their containers. Add and Remove
// are one transaction each; Remove of something absent succeeds; Check
// names the first piece of an attachment that is missing.
type Datapath interface {
	Add(a Attachment) error
	Remove(a Attachment) error
	Check(a Attachment) error
}

// DefaultBackend is the backend for a config that names none: what the
// host's NAT already uses (nat.Detect: iptables when the legacy xtables nat
// table is in use, else nftables).
func DefaultBackend() string {
	host, err := netns.Host()
	if err != nil {
		return config.BackendNFTables
	}
	defer host.Close()
	return nat.Detect(host)
}

// NewDatapath returns the datapath of backend ("nftables" or "iptables").
// conditions are the config's extra iptables matches per family.
func NewDatapath(backend string, conf *config.Portmap) (Datapath, error) {
	switch backend {
	case config.BackendNFTables:
		return NFT{}, nil
	case config.BackendIPTables:
		return newIPTables(conf), nil
	}
	return nil, fmt.Errorf("portmap: unknown backend %q", backend)
}

// BackendAvailable reports whether backend can run here: nftables always
// (netlink, in-process), iptables when its tools are installed.
func BackendAvailable(backend string) bool {
	switch backend {
	case config.BackendNFTables:
		return true
	case config.BackendIPTables:
		return nat.Available(config.BackendIPTables)
	}
	return false
}
