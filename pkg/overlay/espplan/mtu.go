package espplan

// ESP in transport mode between the outer IPv4 header and the VXLAN UDP
// header, with rfc4106(gcm(aes)): an 8-byte header (SPI, sequence), an
// 8-byte IV, then the UDP datagram padded so that it and the 2-byte
// trailer end on 4 bytes, then the 16-byte ICV (RFC 4303 §2, RFC 4106 §3).
const (
	espHeader  = 8 + 8
	espTrailer = 2
	espICV     = ICVBits / 8
	// vxlanInner is what VXLAN adds around the inner IP packet inside
	// the UDP datagram: UDP 8, VXLAN 8, the inner Ethernet header 14.
	vxlanInner = 8 + 8 + 14
	ipv4Header = 20
)

// InnerMTU is the MTU of an encrypted VXLAN device (and its containers)
// over an underlay of MTU underlay: the largest inner packet whose outer
// packet fits, padding included: 1416 for 1500, where plain VXLAN's is
// 1450.
func InnerMTU(underlay int) int {
	for m := underlay - ipv4Header - espHeader - vxlanInner - espTrailer - espICV; m > 0; m-- {
		if OuterSize(m) <= underlay {
			return m
		}
	}
	return 0
}

// OuterSize is the size on the underlay of an encrypted VXLAN packet
// carrying an inner IP packet of n bytes.
func OuterSize(n int) int {
	payload := vxlanInner + n + espTrailer
	pad := (4 - payload%4) % 4
	return ipv4Header + espHeader + payload + pad + espICV
}
