package esp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/overlay/espplan"
)

// Probe checks that the kernel of ns can hold the network's SAs, by
// adding one to 127.0.0.2 (berth's SPI 0xbfffffff) and deleting it: ESP
// (CONFIG_INET_ESP) and the AEAD rfc4106(gcm(aes)) (CONFIG_CRYPTO_GCM),
// with ESN and a replay window. A kernel without them is ErrUnsupported,
// naming them.
//
// Equivalent: ip xfrm state add src 127.0.0.1 dst 127.0.0.2 proto esp spi 0xbfffffff \
// mode transport aead 'rfc4106(gcm(aes))' 0x… 128 flag esn replay-window 1024; ip xfrm state del …
func Probe(ns *netns.NS) error {
	probe := espplan.SA{Src: netip.MustParseAddr("127.0.0.1"), Dst: netip.MustParseAddr("127.0.0.2"), SPI: 0xbfffffff, Key: make([]byte, espplan.SAKeySize)}
	st := state(probe, 0)
	h, err := ns.Xfrm()
	if err != nil {
		return unsupported("no xfrm netlink (CONFIG_XFRM_USER, module xfrm_user)", err)
	}
	err = h.XfrmStateAdd(st)
	if err == nil {
		if derr := h.XfrmStateDel(st); derr != nil {
			return fmt.Errorf("esp probe: delete the probe SA (%s): %w", probe, derr)
		}
		return nil
	}
	switch {
	case errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.ENOENT):
		// The AEAD is checked before the protocol: ask for ESP with
		// an algorithm every kernel with ESP has.
		cbc := state(probe, 0)
		cbc.Aead = nil
		cbc.Crypt = &netlink.XfrmStateAlgo{Name: "cbc(aes)", Key: make([]byte, 16)}
		cbc.Auth = &netlink.XfrmStateAlgo{Name: "hmac(sha256)", Key: make([]byte, 32), TruncateLen: 128}
		if cerr := h.XfrmStateAdd(cbc); cerr == nil {
			_ = h.XfrmStateDel(cbc)
			return unsupported("the AEAD "+AEAD+" is not available (CONFIG_CRYPTO_GCM, module gcm)", err)
		} else if errors.Is(cerr, unix.EPROTONOSUPPORT) {
			return unsupported("no ESP (CONFIG_INET_ESP, module esp4) and no AEAD "+AEAD+" (CONFIG_CRYPTO_GCM, module gcm)", err)
		}
		return unsupported("the AEAD "+AEAD+" is not available (CONFIG_CRYPTO_GCM, module gcm)", err)
	case errors.Is(err, unix.EPROTONOSUPPORT):
		return unsupported("no ESP (CONFIG_INET_ESP, module esp4)", err)
	case errors.Is(err, unix.EINVAL):
		return unsupported("ESP SAs with ESN and a replay window of "+fmt.Sprint(ReplayWindow)+" refused (CONFIG_XFRM_USER, a kernel before 3.x?)", err)
	}
	return fmt.Errorf("esp probe: add a probe SA (%s): %w", probe, err)
}

// state is s as the kernel's xfrm state, tied to the policy by reqid.
func state(s espplan.SA, reqid uint32) *netlink.XfrmState {
	return &netlink.XfrmState{
		Src: net.IP(s.Src.AsSlice()), Dst: net.IP(s.Dst.AsSlice()),
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT,
		Spi: int(s.SPI), Reqid: int(reqid),
		Aead: &netlink.XfrmStateAlgo{Name: AEAD, Key: s.Key, ICVLen: espplan.ICVBits},
		ESN:  true, ReplayWindow: ReplayWindow,
	}
}

// ListSAs reads the network's SAs from the kernel of ns: ESP, its reqid,
// berth's SPIs. Out is set for those whose source is spec.VTEP; Epoch is
// left 0 (the kernel does not know it).
//
// Equivalent: ip xfrm state list reqid $reqid
func ListSAs(ns *netns.NS, spec Spec) ([]espplan.SA, error) {
	h, err := ns.Xfrm()
	if err != nil {
		return nil, err
	}
	all, err := netns.RetryDump(func() ([]netlink.XfrmState, error) { return h.XfrmStateList(netlink.FAMILY_V4) })
	if err != nil {
		return nil, fmt.Errorf("list xfrm states: %w", err)
	}
	var out []espplan.SA
	for _, st := range all {
		if st.Proto != netlink.XFRM_PROTO_ESP || uint32(st.Reqid) != spec.Reqid || !espplan.IsBerthSPI(uint32(st.Spi)) {
			continue
		}
		src, ok1 := netip.AddrFromSlice(st.Src)
		dst, ok2 := netip.AddrFromSlice(st.Dst)
		if !ok1 || !ok2 {
			continue
		}
		sa := espplan.SA{Src: src.Unmap(), Dst: dst.Unmap(), SPI: uint32(st.Spi)}
		sa.Out = sa.Src == spec.VTEP
		// vishvananda/netlink does not read the ESN flag back; the
		// algorithm, the ICV and the key must be berth's.
		if st.Aead != nil && st.Aead.Name == AEAD && st.Aead.ICVLen == espplan.ICVBits {
			sa.Key = st.Aead.Key
		} // else no key: never the same as a planned SA, so it is replaced
		out = append(out, sa)
	}
	return out, nil
}

// Apply runs the steps of changes in the kernel of ns, in their order,
// stopping at the first failure: what ran stays (the next sync reads the
// kernel back and goes on from there). An add of an SA that exists
// (another agent's run, an earlier failure) updates it; a delete of one
// that is gone succeeds.
//
// Equivalent: ip xfrm state add … / ip xfrm state del src $src dst $dst proto esp spi $spi
func Apply(ns *netns.NS, spec Spec, changes espplan.Changes) (applied int, err error) {
	h, err := ns.Xfrm()
	if err != nil {
		return 0, err
	}
	for _, step := range changes.Steps() {
		st := state(step.SA, spec.Reqid)
		if step.Delete {
			if err := h.XfrmStateDel(st); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
				return applied, fmt.Errorf("delete SA %s: %w", step.SA, err)
			}
		} else if err := h.XfrmStateAdd(st); err != nil {
			if !errors.Is(err, unix.EEXIST) {
				return applied, fmt.Errorf("add SA %s: %w", step.SA, err)
			}
			if err := h.XfrmStateDel(st); err != nil {
				return applied, fmt.Errorf("replace SA %s: delete: %w", step.SA, err)
			}
			if err := h.XfrmStateAdd(st); err != nil {
				return applied, fmt.Errorf("replace SA %s: add: %w", step.SA, err)
			}
		}
		applied++
	}
	return applied, nil
}

// DeleteSAs deletes every SA of the network from the kernel of ns.
//
// Equivalent: ip xfrm state deleteall reqid $reqid (berth's SPIs only)
func DeleteSAs(ns *netns.NS, spec Spec) error {
	have, err := ListSAs(ns, spec)
	if err != nil {
		return err
	}
	_, err = Apply(ns, spec, espplan.Changes{Delete: have})
	return err
}
