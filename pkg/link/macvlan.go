package link

// Macvlan links of containers and their masters (parents): netlink in the
// host's namespace (the calling thread's) and, through handles, in the
// container's.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/netns"
)

// TempLinkPrefix starts the name a container's macvlan has between its
// creation and its rename to CNI_IFNAME inside the container.
const TempLinkPrefix = "bmt"

// TempLinkName is the temporary name of an attachment's macvlan: "bmt" and
// the same 12 hex digits as HostVethName. The link is born in the
// container's namespace under it (so CNI_IFNAME never clashes with a host
// interface of that name), and it is deterministic so that DEL finds a
// link a crashed ADD left unrenamed.
func TempLinkName(o Owner) string {
	return TempLinkPrefix + strings.TrimPrefix(HostVethName(o), HostVethPrefix)
}

var macvlanModes = map[string]netlink.MacvlanMode{
	"bridge":   netlink.MACVLAN_MODE_BRIDGE,
	"private":  netlink.MACVLAN_MODE_PRIVATE,
	"vepa":     netlink.MACVLAN_MODE_VEPA,
	"passthru": netlink.MACVLAN_MODE_PASSTHRU,
}

func macvlanModeName(m netlink.MacvlanMode) string {
	for name, mode := range macvlanModes {
		if mode == m {
			return name
		}
	}
	return fmt.Sprintf("mode %d", m)
}

// Master is a macvlan master (the parent link) as found in its namespace.
type Master struct {
	Name    string
	Index   int
	MTU     int
	Up      bool           // administratively up
	Promisc bool           // promiscuous mode set on it (ip link set promisc on)
	Addrs   []netip.Prefix // its addresses, link-local ones left out
}

// ErrNoSuchLink is wrapped by lookups of a link that does not exist.
var ErrNoSuchLink = errors.New("no such interface")

// handleIn returns a netlink handle in n, or in the calling thread's
// namespace (the host's) when n is nil.
func handleIn(n ns.NetNS) (*netlink.Handle, error) {
	if n == nil {
		h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
		if err != nil {
			return nil, fmt.Errorf("netlink: %w", err)
		}
		return h, nil
	}
	return netlinkHandleIn(n)
}

func where(n ns.NetNS) string {
	if n == nil {
		return "the host namespace"
	}
	return "namespace " + n.Path()
}

// FindMaster looks up the link name in n (nil: the host's namespace). A
// missing link is an error wrapping ErrNoSuchLink.
//
// Equivalent: ip [-n $ns] addr show dev $name
func FindMaster(name string, n ns.NetNS) (Master, error) {
	h, err := handleIn(n)
	if err != nil {
		return Master{}, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return Master{}, fmt.Errorf("master %q in %s: %w", name, where(n), ErrNoSuchLink)
		}
		return Master{}, fmt.Errorf("look up master %q in %s: %w", name, where(n), err)
	}
	a := l.Attrs()
	m := Master{Name: a.Name, Index: a.Index, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, Promisc: a.RawFlags&unix.IFF_PROMISC != 0}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return Master{}, fmt.Errorf("list addresses of master %q: %w", name, err)
	}
	for _, ad := range addrs {
		if p, ok := PrefixOf(ad.IPNet); ok && !p.Addr().IsLinkLocalUnicast() {
			m.Addrs = append(m.Addrs, p)
		}
	}
	return m, nil
}

// DefaultRouteName returns the name of the link of n's default route (nil:
// the host's namespace), IPv4 first, then IPv6: upstream macvlan's default
// master. It wraps ErrNoSuchLink when there is no default route.
func DefaultRouteName(n ns.NetNS) (string, error) {
	var h *netns.NS
	var err error
	if n == nil {
		h, err = netns.Host()
	} else {
		h, err = netns.Open(n.Path())
	}
	if err != nil {
		return "", err
	}
	defer h.Close()
	l, err := DefaultRouteLink(h, netlink.FAMILY_V4, netlink.FAMILY_V6)
	if errors.Is(err, ErrNoDefaultRoute) {
		return "", fmt.Errorf("no default route in %s: %w", where(n), ErrNoSuchLink)
	}
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

// MacvlanSpec is one container's macvlan.
type MacvlanSpec struct {
	Owner       Owner
	Master      Master
	MasterNS    ns.NetNS // where the master is: nil for the host, or ContainerNS (linkInContainer)
	ContainerNS ns.NetNS
	Mode        string           // bridge, private, vepa, passthru
	MTU         int              // 0: the master's
	MAC         net.HardwareAddr // nil: kernel-chosen
	BcQueueLen  uint32           // 0: the kernel's default
}

// AddMacvlan creates the container's macvlan on the master, born in the
// container's namespace under TempLinkName, renames it to the owner's
// IfName there and tags it with the owner's alias. It stays down. It
// returns the link's MAC. On error nothing is left.
//
// Equivalent: ip link add $tmp link $master netns $ns type macvlan mode $mode;
// ip -n $ns link set $tmp name $ifname alias …
func AddMacvlan(spec MacvlanSpec) (mac net.HardwareAddr, err error) {
	mode, ok := macvlanModes[spec.Mode]
	if !ok {
		return nil, fmt.Errorf("unknown macvlan mode %q", spec.Mode)
	}
	tmp := TempLinkName(spec.Owner)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = tmp
	attrs.ParentIndex = spec.Master.Index
	attrs.MTU = spec.MTU
	attrs.HardwareAddr = spec.MAC
	if spec.MasterNS == nil {
		attrs.Namespace = netlink.NsFd(int(spec.ContainerNS.Fd()))
	}
	mv := &netlink.Macvlan{LinkAttrs: attrs, Mode: mode, BCQueueLen: spec.BcQueueLen}
	h, err := handleIn(spec.MasterNS)
	if err != nil {
		return nil, err
	}
	err = h.LinkAdd(mv)
	h.Close()
	if err != nil {
		return nil, macvlanAddError(spec, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, DeleteMacvlan(spec.ContainerNS, spec.Owner))
		}
	}()
	c, err := netlinkHandleIn(spec.ContainerNS)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	l, err := c.LinkByName(tmp)
	if err != nil {
		return nil, fmt.Errorf("look up new macvlan %s in container: %w", tmp, err)
	}
	if err := c.LinkSetName(l, spec.Owner.IfName); err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, cnierr.Env("CNI_IFNAME", spec.Owner.IfName, err, "an interface of that name already exists in the container")
		}
		return nil, fmt.Errorf("rename macvlan %s to %s in container: %w", tmp, spec.Owner.IfName, err)
	}
	if alias := Alias(spec.Owner); alias != "" {
		if err := c.LinkSetAlias(l, alias); err != nil {
			return nil, fmt.Errorf("tag macvlan %s: %w", spec.Owner.IfName, err)
		}
	}
	if l, err = c.LinkByName(spec.Owner.IfName); err != nil {
		return nil, fmt.Errorf("look up macvlan %s in container: %w", spec.Owner.IfName, err)
	}
	return l.Attrs().HardwareAddr, nil
}

// macvlanAddError explains the kernel's refusals a user can act on.
func macvlanAddError(spec MacvlanSpec, err error) error {
	what := fmt.Sprintf("create %s macvlan on master %q", spec.Mode, spec.Master.Name)
	switch {
	case errors.Is(err, unix.EEXIST):
		return cnierr.Env("CNI_IFNAME", spec.Owner.IfName, err, "a link %s (a previous ADD of this attachment not deleted) is in the container", TempLinkName(spec.Owner))
	case errors.Is(err, unix.EADDRINUSE) && spec.MAC != nil:
		return cnierr.WithCode(cnierr.CodeHostState, fmt.Errorf("%s: MAC %s is already in use on that master: %w", what, spec.MAC, err))
	case errors.Is(err, unix.EINVAL):
		// The kernel's one refusal of a valid request: a master in
		// passthru mode carries a single macvlan.
		return cnierr.WithCode(cnierr.CodeHostState, fmt.Errorf("%s: %w (a master carries a passthru macvlan only alone: either this one is passthru and another macvlan is on the master, or one in passthru mode is)", what, err))
	}
	return fmt.Errorf("%s: %w", what, err)
}

// DeleteMacvlan deletes the owner's macvlan in n, under its final or its
// temporary name. A link that is missing, not a macvlan, or tagged for
// another owner is left alone (nil).
//
// Equivalent: ip -n $ns link del $ifname
func DeleteMacvlan(n ns.NetNS, o Owner) error {
	h, err := netlinkHandleIn(n)
	if err != nil {
		return err
	}
	defer h.Close()
	var errs []error
	for _, name := range []string{o.IfName, TempLinkName(o)} {
		l, err := h.LinkByName(name)
		if err != nil {
			if !IsNotFound(err) {
				errs = append(errs, fmt.Errorf("look up %s in %s: %w", name, n.Path(), err))
			}
			continue
		}
		if alias := l.Attrs().Alias; l.Type() != "macvlan" || alias != "" && alias != Alias(o) {
			continue
		}
		if err := h.LinkDel(l); err != nil && !IsNotFound(err) {
			errs = append(errs, fmt.Errorf("delete macvlan %s in %s: %w", name, n.Path(), err))
		}
	}
	return errors.Join(errs...)
}

// CheckMacvlan verifies that the owner's interface in n is a macvlan on
// master in mode, and names the first difference.
func CheckMacvlan(n ns.NetNS, o Owner, master Master, mode string) error {
	h, err := netlinkHandleIn(n)
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(o.IfName)
	if err != nil {
		return fmt.Errorf("macvlan %s missing from container namespace %s: %w", o.IfName, n.Path(), err)
	}
	mv, ok := l.(*netlink.Macvlan)
	if !ok {
		return fmt.Errorf("interface %s in the container is a %s, not a macvlan", o.IfName, l.Type())
	}
	if mv.ParentIndex != master.Index {
		return fmt.Errorf("macvlan %s is not on master %q (its parent is link %d, the master is %d)", o.IfName, master.Name, mv.ParentIndex, master.Index)
	}
	if got := macvlanModeName(mv.Mode); got != mode {
		return fmt.Errorf("macvlan %s is in mode %s, want %s", o.IfName, got, mode)
	}
	return nil
}

// NotifyNeighbours makes the container's interface announce its addresses
// when it comes up: a gratuitous ARP (arp_notify) and an unsolicited
// neighbour advertisement per IPv6 address (ndisc_notify), so that LAN
// hosts holding an old MAC for a reused address update it at once. Call it
// before ConfigureContainer.
//
// Equivalent: ip netns exec $c sysctl -w net.ipv4.conf.$if.arp_notify=1 net.ipv6.conf.$if.ndisc_notify=1
func NotifyNeighbours(n ns.NetNS, ifName string) error {
	return inNS(n, func() error {
		if err := writeSysctl(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/arp_notify", ifName), "1"); err != nil {
			return err
		}
		err := writeSysctl(fmt.Sprintf("/proc/sys/net/ipv6/conf/%s/ndisc_notify", ifName), "1")
		if errors.Is(err, os.ErrNotExist) {
			return nil // IPv6 disabled in the container
		}
		return err
	})
}

// SetPromisc turns promiscuous mode of the host link name on or off.
//
// Equivalent: ip link set $name promisc on|off
func SetPromisc(name string, on bool) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return fmt.Errorf("master %q: %w", name, ErrNoSuchLink)
		}
		return fmt.Errorf("look up master %q: %w", name, err)
	}
	if on {
		err = netlink.SetPromiscOn(l)
	} else {
		err = netlink.SetPromiscOff(l)
	}
	if err != nil {
		return fmt.Errorf("set promiscuous mode of %q to %v: %w", name, on, err)
	}
	return nil
}

// VlanParent splits a Linux VLAN sub-interface name such as "eth0.50" (the
// kernel's and Docker's convention) into its parent and VLAN id.
func VlanParent(name string) (parent string, vid int, ok bool) {
	i := strings.LastIndexByte(name, '.')
	if i <= 0 || i == len(name)-1 {
		return "", 0, false
	}
	digits := name[i+1:]
	if strings.Trim(digits, "0123456789") != "" || len(digits) > 4 {
		return "", 0, false
	}
	vid, _ = strconv.Atoi(digits)
	if vid < 1 || vid > 4094 {
		return "", 0, false
	}
	return name[:i], vid, true
}

// VlanSupported reports whether the kernel can create 802.1q VLAN links. It
// asks for one without a parent: a kernel that knows the "vlan" kind refuses
// that (EINVAL) and creates nothing; one that does not answers EOPNOTSUPP,
// after trying to load the 8021q module.
//
// Equivalent: ip link add name $probe type vlan id 1 (expect an error)
func VlanSupported() (bool, error) {
	probe := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "bthvlanprobe"}, VlanId: 1}
	err := netlink.LinkAdd(probe)
	switch {
	case err == nil: // not expected: the kernel took it anyway
		if derr := netlink.LinkDel(probe); derr != nil && !IsNotFound(derr) {
			return true, fmt.Errorf("delete VLAN probe %s: %w", probe.Name, derr)
		}
		return true, nil
	case errors.Is(err, unix.EOPNOTSUPP):
		return false, nil
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENODEV):
		return true, nil
	}
	return false, fmt.Errorf("probe for 802.1q VLAN support: %w", err)
}
