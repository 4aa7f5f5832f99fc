package store

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/berth-cni/berth/pkg/config"
)

// This file is the pure part shared by the backends that checks and
// chooses: validation of what callers and the store hand in, and the
// choice of a subnet.

// MaxSubnetLen is the longest per-host subnet: a /30 still leaves two host
// addresses, the bridge's gateway and one container.
const MaxSubnetLen = 30

// MaxVNI is the largest VXLAN network identifier (24 bits).
const MaxVNI = 1<<24 - 1

// maxHost bounds a host name: a DNS name is at most 253 bytes.
const maxHost = 253

// Validate checks every field of n and names the first bad one with its
// value.
func (n Network) Validate() error {
	if err := config.ValidateNetworkName(n.Name); err != nil {
		return fmt.Errorf("overlay network: %w", err)
	}
	switch {
	case !n.CIDR.IsValid():
		return fmt.Errorf("overlay network %q: cidr: a network prefix is required", n.Name)
	case !n.CIDR.Addr().Is4():
		return fmt.Errorf("overlay network %q: cidr %s: only IPv4 is supported for now", n.Name, n.CIDR)
	case n.CIDR != n.CIDR.Masked():
		return fmt.Errorf("overlay network %q: cidr %s: host bits are set (the network is %s)", n.Name, n.CIDR, n.CIDR.Masked())
	case n.SubnetLen <= n.CIDR.Bits() || n.SubnetLen > MaxSubnetLen:
		return fmt.Errorf("overlay network %q: subnetLen %d: must be longer than the cidr's /%d and at most %d",
			n.Name, n.SubnetLen, n.CIDR.Bits(), MaxSubnetLen)
	case n.VNI < 1 || n.VNI > MaxVNI:
		return fmt.Errorf("overlay network %q: vni %d: must be between 1 and %d", n.Name, n.VNI, MaxVNI)
	case n.Port == 0:
		return fmt.Errorf("overlay network %q: port 0: a UDP port is required", n.Name)
	case n.Encryption != "" && n.Encryption != EncryptESP:
		return fmt.Errorf("overlay network %q: encryption %q: must be %q or none", n.Name, n.Encryption, EncryptESP)
	case n.Encrypted() && n.KeyRotation < MinKeyRotation:
		return fmt.Errorf("overlay network %q: keyRotation %v: an encrypted network rotates its key at most every %v", n.Name, n.KeyRotation, MinKeyRotation)
	case !n.Encrypted() && n.KeyRotation != 0:
		return fmt.Errorf("overlay network %q: keyRotation %v: only an encrypted network rotates keys", n.Name, n.KeyRotation)
	}
	return nil
}

// Validate checks every field of l and names the first bad one with its
// value. It does not check that the subnet belongs to a network; see
// Network.HasSubnet.
func (l Lease) Validate() error {
	if err := ValidateHost(l.Host); err != nil {
		return err
	}
	switch {
	case !l.Subnet.IsValid():
		return fmt.Errorf("lease of host %q: subnet: a prefix is required", l.Host)
	case !l.Subnet.Addr().Is4():
		return fmt.Errorf("lease of host %q: subnet %s: only IPv4 is supported for now", l.Host, l.Subnet)
	case l.Subnet != l.Subnet.Masked():
		return fmt.Errorf("lease of host %q: subnet %s: host bits are set", l.Host, l.Subnet)
	}
	return l.ValidateEndpoint()
}

// ValidateEndpoint checks what Acquire needs from its caller besides the
// subnet: the VTEP and the MAC.
func (l Lease) ValidateEndpoint() error {
	if !l.VTEP.IsValid() || l.VTEP.IsUnspecified() || l.VTEP.IsMulticast() || l.VTEP.Zone() != "" {
		return fmt.Errorf("lease of host %q: vtep %q: a unicast address is required", l.Host, l.VTEP)
	}
	mac, err := net.ParseMAC(l.MAC)
	if err != nil || len(mac) != 6 {
		return fmt.Errorf("lease of host %q: mac %q: not an Ethernet MAC address", l.Host, l.MAC)
	}
	if mac[0]&1 == 1 {
		return fmt.Errorf("lease of host %q: mac %q: a multicast MAC cannot be a device address", l.Host, l.MAC)
	}
	return nil
}

// ValidateHost checks a node name: it is stored and compared, never used
// as a path, but it is shown to people, so no control characters.
func ValidateHost(h string) error {
	if h == "" {
		return errors.New("lease: host: a node name is required")
	}
	if len(h) > maxHost {
		return fmt.Errorf("lease: host %q: longer than %d bytes", h, maxHost)
	}
	for _, r := range h {
		if r <= ' ' || r == 0x7f || r == '/' {
			return fmt.Errorf("lease: host %q: character %q not allowed", h, r)
		}
	}
	return nil
}

// ValidateAcquire checks the arguments of Acquire: the host, VTEP and MAC
// of want (its subnet is only a wish) and the ttl. Renewal runs every
// ttl/3, so a ttl under a second would spin.
func ValidateAcquire(want Lease, ttl time.Duration) error {
	var errTTL error
	if ttl < time.Second {
		errTTL = fmt.Errorf("lease ttl %v: must be at least 1s", ttl)
	}
	return errors.Join(errTTL, ValidateHost(want.Host), want.ValidateEndpoint())
}

// HasSubnet reports whether p is one of n's per-host subnets: inside CIDR,
// SubnetLen long, with no host bits.
func (n Network) HasSubnet(p netip.Prefix) bool {
	return p.IsValid() && p.Bits() == n.SubnetLen && p == p.Masked() &&
		n.CIDR.Contains(p.Addr())
}

// subnetCount is the number of per-host subnets of a valid n.
func (n Network) subnetCount() uint64 {
	return 1 << (n.SubnetLen - n.CIDR.Bits())
}

// subnet returns the i-th per-host subnet of a valid n (i < subnetCount).
func (n Network) subnet(i uint64) netip.Prefix {
	base := n.CIDR.Addr().As4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i) << (32 - n.SubnetLen)
	a := netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	return netip.PrefixFrom(a, n.SubnetLen)
}

// PickSubnet chooses the subnet Acquire leases for want.Host among the
// live leases of a valid n, given what the store remembers of each
// subnet's last holder (past, one per subnet; those outside n are
// ignored). In order:
//
//  1. the host's own live lease (the lowest, should it hold several);
//  2. want.Subnet, when it is one of n's subnets and free;
//  3. a free subnet whose last holder is want.Host, the latest (highest
//     Rev) if several, ties to the lowest subnet;
//  4. the lowest free subnet that nobody held, past the first;
//  5. the free subnet whose last holder left longest ago (lowest Rev,
//     ties to the lowest subnet), past the first.
//
// A subnet whose holder's lease expired in a store outage thus waits for
// that holder, which asks for it again (agent.reacquire), and a new host
// takes it only once nothing else is free. A full network is
// ErrConflict.
func PickSubnet(n Network, want Lease, live []Lease, past []LastHolder) (netip.Prefix, error) {
	subnet, ok, taken := ownOrWanted(n, want, live)
	if ok {
		return subnet, nil
	}
	// The first subnet is never handed out: its device address would be
	// the cluster network's own (10.244.0.0 of 10.244.0.0/16), which
	// people and tools read as the network, not a host; flannel skips it
	// too. A host that holds it (from a release before this rule, or by
	// asking for it as want.Subnet) keeps it, and gets it back as its
	// last holder.
	first := n.subnet(0)
	held := make(map[netip.Prefix]bool, len(past))
	var mine, oldest LastHolder // zero Subnet: none
	for _, p := range past {
		if !n.HasSubnet(p.Subnet) {
			continue
		}
		held[p.Subnet] = true
		switch {
		case taken[p.Subnet]:
		case p.Host == want.Host:
			if replaces(p, mine, true) {
				mine = p
			}
		case p.Subnet != first:
			if replaces(p, oldest, false) {
				oldest = p
			}
		}
	}
	if mine.Subnet.IsValid() {
		return mine.Subnet, nil
	}
	// The first subnet neither taken nor held is among the first
	// len(taken)+len(held)+2, so this loop is short even for a /8 split
	// into /30s.
	for i := uint64(1); i < n.subnetCount(); i++ {
		if p := n.subnet(i); !taken[p] && !held[p] {
			return p, nil
		}
	}
	if oldest.Subnet.IsValid() {
		return oldest.Subnet, nil
	}
	return netip.Prefix{}, fmt.Errorf("overlay network %q: all %d subnets of %s (/%d each) past the first are leased: %w",
		n.Name, n.subnetCount()-1, n.CIDR, n.SubnetLen, ErrConflict)
}

// OwnOrWanted is what PickSubnet chooses without the history, if that
// decides (ok): the host's own live lease, else want.Subnet when free. A
// backend that reads the history apart from the leases reads it only when
// ok is false.
func OwnOrWanted(n Network, want Lease, live []Lease) (p netip.Prefix, ok bool) {
	p, ok, _ = ownOrWanted(n, want, live)
	return p, ok
}

// ownOrWanted is OwnOrWanted, and the subnets of live.
func ownOrWanted(n Network, want Lease, live []Lease) (p netip.Prefix, ok bool, taken map[netip.Prefix]bool) {
	taken = make(map[netip.Prefix]bool, len(live))
	var own []netip.Prefix
	for _, l := range live {
		taken[l.Subnet] = true
		if l.Host == want.Host && n.HasSubnet(l.Subnet) {
			own = append(own, l.Subnet)
		}
	}
	if len(own) > 0 {
		slices.SortFunc(own, netip.Prefix.Compare)
		return own[0], true, taken
	}
	if n.HasSubnet(want.Subnet) && !taken[want.Subnet] {
		return want.Subnet, true, taken
	}
	return netip.Prefix{}, false, taken
}

// replaces reports whether p is a better pick than cur (none when its
// Subnet is zero): held later when latest, else earlier; of the same
// revision, the lower subnet.
func replaces(p, cur LastHolder, latest bool) bool {
	switch {
	case !cur.Subnet.IsValid():
		return true
	case p.Rev != cur.Rev:
		return (p.Rev > cur.Rev) == latest
	}
	return p.Subnet.Compare(cur.Subnet) < 0
}
