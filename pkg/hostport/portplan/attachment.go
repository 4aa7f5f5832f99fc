package portplan

import (
	"net/netip"

	"github.com/berth-cni/berth/pkg/owner"
)

// Mapping is one published port: a key and the container port behind it.
type Mapping struct {
	Key
	ContainerPort uint16
}

// Attachment is everything one container interface holds: its mappings,
// where they lead, and how its traffic is masqueraded. It is also the
// attachment's index file, so DEL can undo exactly this without the
// prevResult a runtime may not send.
type Attachment struct {
	Owner    owner.Owner
	Mappings []Mapping
	// Targets are the container's addresses with their subnets (at most
	// one per family): DNAT goes to the address, hairpin masquerade
	// matches the subnet.
	Targets []netip.Prefix
	SNAT    bool // masquerade hairpin and localhost traffic (upstream's snat)
	MasqAll bool // masquerade all traffic to the mapped ports
	Backend string
}

// Target returns the container address of the family of a, if any.
func (a Attachment) Target(v6 bool) (netip.Prefix, bool) {
	for _, t := range a.Targets {
		if t.Addr().Is6() == v6 {
			return t, true
		}
	}
	return netip.Prefix{}, false
}
