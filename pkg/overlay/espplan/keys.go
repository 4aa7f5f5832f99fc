package espplan

import (
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"net/netip"
	"strings"

	"github.com/berth-cni/berth/pkg/overlay/store"
)

// SAKeySize is the keying material of one rfc4106(gcm(aes)) SA: a 128-bit
// AES key and the 4-byte salt of its nonces (RFC 4106 §8.1).
const SAKeySize = 16 + 4

// ICVBits is the AES-GCM tag length: 16 bytes, the longest (RFC 4106 §8.3).
const ICVBits = 128

// Host is one end of a pair as the keys know it: its name, VTEP and its
// subnet's index in the network, all from its lease.
type Host struct {
	Name  string
	VTEP  netip.Addr
	Index uint32 // SubnetIndex of its subnet
}

func (h Host) String() string { return fmt.Sprintf("%s (%s)", h.Name, h.VTEP) }

// SAKey derives the key of the SA from one host to another under ring key
// k of network: HKDF-SHA256 with the ring key as the secret and, as the
// info, the network, the epoch and both hosts' names and VTEPs in order
// (from first). Each pair and direction has its own key, so no two hosts'
// SAs share a key and nonce space, and a host that learns one pair's key
// learns nothing of another's.
func SAKey(network string, k Key, from, to Host) ([]byte, error) {
	var info strings.Builder
	info.WriteString("berth overlay esp v1\x00")
	info.WriteString(network)
	info.WriteByte(0)
	var e [4]byte
	binary.BigEndian.PutUint32(e[:], k.Epoch)
	info.Write(e[:])
	for _, h := range []Host{from, to} {
		info.WriteString(h.Name)
		info.WriteByte(0)
		a := h.VTEP.As16()
		info.Write(a[:])
	}
	key, err := hkdf.Key(sha256.New, k.Secret, nil, info.String(), SAKeySize)
	if err != nil {
		return nil, fmt.Errorf("derive the key %s → %s of %s: %w", from, to, k, err)
	}
	return key, nil
}

// SPI layout: 0xb in the top four bits (berth's, and never one of the
// reserved SPIs 1–255), the epoch's low four bits, then the sending
// host's subnet index. A receiver looks an SA up by its own address and
// the SPI alone, so the SPI must differ for every sender and ring key it
// receives from: subnet indexes are unique among live leases, and the
// ring spans fewer than 16 epochs (MaxKeys).
const (
	spiTag       = 0xb << 28
	spiEpochBits = 4
	spiIndexBits = 24
	// MaxSubnets is the most subnets an encrypted network may have: the
	// index must fit its SPI bits.
	MaxSubnets = 1 << spiIndexBits
)

// SPI is the SPI of the SAs from host from under the ring key of epoch e.
func SPI(from Host, e uint32) uint32 {
	return spiTag | (e&(1<<spiEpochBits-1))<<spiIndexBits | from.Index&(MaxSubnets-1)
}

// IsBerthSPI reports whether spi has the layout SPI gives (an SA berth
// made, as opposed to one of another IPsec user of the host).
func IsBerthSPI(spi uint32) bool { return spi>>28 == 0xb }

// SubnetIndex is p's index among n's per-host subnets (0 for the first).
func SubnetIndex(n store.Network, p netip.Prefix) (uint32, error) {
	if !n.HasSubnet(p) {
		return 0, fmt.Errorf("subnet %s is not one of network %q's (%s, /%d)", p, n.Name, n.CIDR, n.SubnetLen)
	}
	base, a := n.CIDR.Addr().As4(), p.Addr().As4()
	d := binary.BigEndian.Uint32(a[:]) - binary.BigEndian.Uint32(base[:])
	return d >> (32 - n.SubnetLen), nil
}

// CheckNetwork says whether n can be encrypted: IPv4, and no more than
// MaxSubnets subnets.
func CheckNetwork(n store.Network) error {
	if !n.CIDR.Addr().Is4() {
		return fmt.Errorf("network %q: encryption supports IPv4 networks only, not %s", n.Name, n.CIDR)
	}
	if bits := n.SubnetLen - n.CIDR.Bits(); bits > spiIndexBits {
		return fmt.Errorf("network %q: %s cut into /%d has 2^%d subnets: an encrypted network has at most 2^%d (make -subnet-len shorter)",
			n.Name, n.CIDR, n.SubnetLen, bits, spiIndexBits)
	}
	return nil
}

// Reqid is what ties the network's policy to its SAs (ip xfrm … reqid):
// 0xb in the top four bits and the VNI.
func Reqid(n store.Network) uint32 { return spiTag | n.VNI&(1<<24-1) }
