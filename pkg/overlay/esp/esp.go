// Package esp installs the encrypted overlay in a host's kernel: the
// guard that keeps the network's VXLAN from travelling in the clear (an
// xfrm policy that sends it only through an SA, and an nftables table that
// drops what would pass without one), and the ESP security associations
// package espplan plans.
//
// It touches, in the network namespace it is given: xfrm states with the
// network's reqid and berth's SPIs, one xfrm policy (out, the VTEP's UDP
// to the VXLAN port), and the nftables table "inet berth-esp-<hash>".
package esp

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"github.com/berth-cni/berth/pkg/overlay/espplan"
	"github.com/berth-cni/berth/pkg/overlay/store"
)

// Spec is one encrypted network on one host.
type Spec struct {
	Network string
	VNI     uint32
	Port    uint16     // the VXLAN UDP port
	VTEP    netip.Addr // this host's underlay address
	Reqid   uint32     // espplan.Reqid
}

// SpecFor is n's Spec on the host of VTEP vtep.
func SpecFor(n store.Network, vtep netip.Addr) Spec {
	port := n.Port
	if port == 0 {
		port = 4789
	}
	return Spec{Network: n.Name, VNI: n.VNI, Port: port, VTEP: vtep, Reqid: espplan.Reqid(n)}
}

// TableName is the nftables table (family inet) of network's guard.
func TableName(network string) string {
	sum := sha256.Sum256([]byte(network))
	return "berth-esp-" + hex.EncodeToString(sum[:])[:10]
}

// The algorithm every SA uses, as the kernel's crypto API names it.
const AEAD = "rfc4106(gcm(aes))"

// ReplayWindow is the SAs' anti-replay window, in packets (with ESN).
const ReplayWindow = 1024

// ErrUnsupported is wrapped by Probe when the kernel cannot run the
// encrypted overlay; the message names what is missing.
var ErrUnsupported = errors.New("kernel cannot encrypt the overlay")

// unsupported is an ErrUnsupported naming the missing pieces.
func unsupported(missing string, cause error) error {
	return fmt.Errorf("%w: %s (%v)", ErrUnsupported, missing, cause)
}
