package lab

// Kernel features a test may need that a kernel can lack (this project's
// own machines lack all of them; the VM layer's Debian kernel has them).
// Each is probed once per process by creating the object it names in a
// throwaway namespace, "bkprobe-<pid>-<random>", deleted at once; never in
// the machine's own. The testing side (RequireKernel, HasKernel) is in
// testing.go.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// KernelFeature is a kernel feature a test can require.
type KernelFeature int

const (
	KernelVLANFiltering KernelFeature = iota + 1 // bridge VLAN filtering (vlan_filtering 1)
	Kernel8021Q                                  // 802.1q VLAN sub-interfaces (module 8021q)
	KernelESP                                    // IPv4 ESP states with rfc4106(gcm(aes)) (esp4, gcm)
	KernelESP6                                   // IPv6 ESP states with rfc4106(gcm(aes)) (esp6, gcm)
	KernelDummy                                  // dummy links
	KernelIPVLAN                                 // ipvlan links
	KernelWireGuard                              // wireguard links
	KernelGeneve                                 // geneve links
	KernelBond                                   // bonding links
)

// KernelFeatures lists every feature, in declaration order.
var KernelFeatures = []KernelFeature{
	KernelVLANFiltering, Kernel8021Q, KernelESP, KernelESP6,
	KernelDummy, KernelIPVLAN, KernelWireGuard, KernelGeneve, KernelBond,
}

var kernelFeatureNames = map[KernelFeature]string{
	KernelVLANFiltering: "bridge VLAN filtering",
	Kernel8021Q:         "802.1q VLAN sub-interfaces",
	KernelESP:           "IPv4 ESP with rfc4106(gcm(aes))",
	KernelESP6:          "IPv6 ESP with rfc4106(gcm(aes))",
	KernelDummy:         "dummy links",
	KernelIPVLAN:        "ipvlan links",
	KernelWireGuard:     "wireguard links",
	KernelGeneve:        "geneve links",
	KernelBond:          "bonding links",
}

func (f KernelFeature) String() string {
	if s, ok := kernelFeatureNames[f]; ok {
		return s
	}
	return fmt.Sprintf("kernel feature %d", int(f))
}

// VMEnv is the environment variable the VM layer's init sets to "1":
// inside the VM a missing kernel feature fails a test instead of skipping
// it, since the VM is where such tests run.
const VMEnv = "BERTH_VM"

// InVM reports whether this process runs inside the VM layer.
func InVM() bool { return os.Getenv(VMEnv) == "1" }

// featureMissing is a probe's error that is the kernel's "no such
// feature", as opposed to a probe that failed for another reason.
type featureMissing struct{ msg string }

func (e *featureMissing) Error() string { return e.msg }

func missing(format string, args ...any) error {
	return &featureMissing{msg: fmt.Sprintf(format, args...)}
}

type probeResult struct {
	present bool
	why     string // the kernel's answer when missing
	err     error  // the probe itself failed
}

var (
	probeMu    sync.Mutex
	probeCache = map[KernelFeature]probeResult{}
	probeRuns  int // probes run, for the cache's test
)

// HasKernelFeature reports whether this kernel has f, probing it once per
// process in a throwaway namespace (root only). why is the kernel's answer
// when it lacks f; err is a probe that could not tell.
func HasKernelFeature(ctx context.Context, f KernelFeature) (present bool, why string, err error) {
	probeMu.Lock()
	defer probeMu.Unlock()
	r, ok := probeCache[f]
	if !ok {
		r = probeKernel(ctx, f)
		probeCache[f] = r
		probeRuns++
	}
	return r.present, r.why, r.err
}

func probeKernel(ctx context.Context, f KernelFeature) probeResult {
	probe, ok := kernelProbes[f]
	if !ok {
		return probeResult{err: fmt.Errorf("no probe for %v", f)}
	}
	n, err := NewNS(ctx, fmt.Sprintf("bkprobe-%d-%s", os.Getpid(), RandomSuffix(6)))
	if err != nil {
		return probeResult{err: fmt.Errorf("probe %v: %w", f, err)}
	}
	err = n.Do(func() error {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE, unix.NETLINK_XFRM)
		if err != nil {
			return err
		}
		defer h.Close()
		return probe(h)
	})
	if derr := n.Delete(); derr != nil {
		return probeResult{err: fmt.Errorf("probe %v: %w", f, derr)}
	}
	if err == nil {
		return probeResult{present: true}
	}
	var m *featureMissing
	if errors.As(err, &m) {
		return probeResult{why: m.msg}
	}
	return probeResult{err: fmt.Errorf("probe %v: %w", f, err)}
}

// kernelProbes create (and delete) the object a feature names, in the
// namespace of h. A *featureMissing error is the kernel's
// "unsupported"; any other is a failed probe.
var kernelProbes = map[KernelFeature]func(h *netlink.Handle) error{
	// Equivalent: ip link add t type bridge vlan_filtering 1
	KernelVLANFiltering: func(h *netlink.Handle) error {
		on := true
		return addLink(h, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "bkprobe"}, VlanFiltering: &on})
	},
	// Equivalent: ip link add p type veth peer q; ip link add link p name p.5 type vlan id 5
	Kernel8021Q: func(h *netlink.Handle) error {
		return onVeth(h, func(parent int) netlink.Link {
			return &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "bkprobe.5", ParentIndex: parent}, VlanId: 5}
		})
	},
	// Equivalent: ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x100 mode transport aead 'rfc4106(gcm(aes))' $key 128
	KernelESP: func(h *netlink.Handle) error {
		return addESPState(h, net.ParseIP("192.0.2.1"), net.ParseIP("192.0.2.2"))
	},
	KernelESP6: func(h *netlink.Handle) error {
		return addESPState(h, net.ParseIP("2001:db8::1"), net.ParseIP("2001:db8::2"))
	},
	// Equivalent: ip link add t type dummy
	KernelDummy: func(h *netlink.Handle) error {
		return addLink(h, &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Name: "bkprobe"}})
	},
	// Equivalent: ip link add p type veth peer q; ip link add link p name t type ipvlan mode l2
	KernelIPVLAN: func(h *netlink.Handle) error {
		return onVeth(h, func(parent int) netlink.Link {
			return &netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: "bkprobeiv", ParentIndex: parent}, Mode: netlink.IPVLAN_MODE_L2}
		})
	},
	// Equivalent: ip link add t type wireguard
	KernelWireGuard: func(h *netlink.Handle) error {
		return addLink(h, &netlink.Wireguard{LinkAttrs: netlink.LinkAttrs{Name: "bkprobe"}})
	},
	// Equivalent: ip link add t type geneve id 5 remote 192.0.2.9
	KernelGeneve: func(h *netlink.Handle) error {
		return addLink(h, &netlink.Geneve{LinkAttrs: netlink.LinkAttrs{Name: "bkprobe"}, ID: 5, Remote: net.ParseIP("192.0.2.9")})
	},
	// Equivalent: ip link add t type bond
	KernelBond: func(h *netlink.Handle) error {
		return addLink(h, netlink.NewLinkBond(netlink.LinkAttrs{Name: "bkprobe"}))
	},
}

// addLink adds l and deletes it again. The kernel answers a link type it
// has no driver for with EOPNOTSUPP ("Unknown device type"), and a bridge
// option it was built without with EOPNOTSUPP too.
func addLink(h *netlink.Handle, l netlink.Link) error {
	if err := h.LinkAdd(l); err != nil {
		if errors.Is(err, unix.EOPNOTSUPP) {
			return missing("ip link add %s type %s: %v", l.Attrs().Name, l.Type(), err)
		}
		return fmt.Errorf("ip link add %s type %s: %w", l.Attrs().Name, l.Type(), err)
	}
	if err := h.LinkDel(l); err != nil {
		return fmt.Errorf("ip link del %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// onVeth adds a veth pair and then the link mk makes on its first end.
func onVeth(h *netlink.Handle, mk func(parent int) netlink.Link) error {
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "bkprobep"}, PeerName: "bkprobeq"}
	if err := h.LinkAdd(veth); err != nil {
		return fmt.Errorf("ip link add bkprobep type veth: %w", err)
	}
	parent, err := h.LinkByName(veth.Name)
	if err != nil {
		return err
	}
	return errors.Join(addLink(h, mk(parent.Attrs().Index)), h.LinkDel(parent))
}

// addESPState adds a transport-mode ESP state with AES-GCM-128 (a 16-byte
// key and the 4-byte salt) and a 16-byte ICV, then deletes it. The kernel
// answers a missing ESP type with EPROTONOSUPPORT ("Requested type not
// found") and a missing AEAD algorithm with ENOSYS ("Requested AEAD
// algorithm not found"); both are missing features.
func addESPState(h *netlink.Handle, src, dst net.IP) error {
	st := &netlink.XfrmState{
		Src: src, Dst: dst, Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT, Spi: 0x100,
		Aead: &netlink.XfrmStateAlgo{Name: "rfc4106(gcm(aes))", Key: make([]byte, 20), ICVLen: 128},
	}
	if err := h.XfrmStateAdd(st); err != nil {
		if errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.ENOSYS) {
			return missing("ip xfrm state add src %s dst %s proto esp aead rfc4106(gcm(aes)): %v", src, dst, err)
		}
		return fmt.Errorf("ip xfrm state add src %s dst %s proto esp: %w", src, dst, err)
	}
	if err := h.XfrmStateDel(st); err != nil {
		return fmt.Errorf("ip xfrm state del src %s dst %s proto esp: %w", src, dst, err)
	}
	return nil
}
