// Package cidr converts between net/netip's values, which berth uses
// inside, and the net.IP/net.IPNet of the edges (netlink, CNI results),
// with one rule for every conversion: an IPv4 address is always unmapped,
// and a mask must be canonical and of the address's own length. It is pure.
package cidr

import (
	"net"
	"net/netip"
)

// IPNet is p as a *net.IPNet for netlink and CNI results: the address with
// host bits kept, a 4-byte IP and mask for IPv4.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Prefix is n as a prefix (host bits kept). An IPv4 address in 16 bytes is
// unmapped, with a 4-byte mask or a 16-byte one of at least 96 bits. ok is
// false for a malformed address, a non-canonical mask (ones not
// contiguous) or a mask of another length than the address's, and for nil.
func Prefix(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	if bits == 0 { // not canonical
		return netip.Prefix{}, false
	}
	if a.Is4In6() && bits == 128 {
		if ones < 96 {
			return netip.Prefix{}, false
		}
		ones, bits = ones-96, 32
	}
	a = a.Unmap()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// Addr is ip as an address, IPv4 unmapped; ok is false for a malformed one
// (nil included).
func Addr(ip net.IP) (netip.Addr, bool) {
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

// Last is the highest address in p (the broadcast address of an IPv4
// subnet).
func Last(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// IsDefault reports whether n is a default route's destination (/0); nil
// is one too, as netlink reports a default route.
func IsDefault(n *net.IPNet) bool {
	if n == nil {
		return true
	}
	ones, bits := n.Mask.Size()
	return ones == 0 && bits != 0
}
