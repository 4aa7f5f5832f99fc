package link

// Macvlan links of containers and their masters (parents): netlink in the
// namespaces each function is given.

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

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

// FindMaster looks up the link name in n (the host's namespace, or the
// container's with linkInContainer). A missing link is an error wrapping
// ErrNoSuchLink.
//
// Equivalent: ip -n $n addr show dev $name
func FindMaster(n *netns.NS, name string) (Master, error) {
	h := n.Netlink()
	l, err := h.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return Master{}, fmt.Errorf("master %q in %s: %w", name, n, ErrNoSuchLink)
		}
		return Master{}, fmt.Errorf("look up master %q in %s: %w", name, n, err)
	}
	a := l.Attrs()
	m := Master{Name: a.Name, Index: a.Index, MTU: a.MTU, Up: a.Flags&net.FlagUp != 0, Promisc: a.RawFlags&unix.IFF_PROMISC != 0}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return Master{}, fmt.Errorf("list addresses of master %q: %w", name, err)
	}
	for _, ad := range addrs {
		if p, ok := cidr.Prefix(ad.IPNet); ok && !p.Addr().IsLinkLocalUnicast() {
			m.Addrs = append(m.Addrs, p)
		}
	}
	return m, nil
}

// MacvlanSpec is one container's macvlan.
type MacvlanSpec struct {
	Owner      owner.Owner
	Master     Master
	MasterNS   *netns.NS // where the master is: the host's, or Container (linkInContainer)
	Container  *netns.NS
	Mode       string           // bridge, private, vepa, passthru
	MTU        int              // 0: the master's
	MAC        net.HardwareAddr // nil: kernel-chosen
	BcQueueLen uint32           // 0: the kernel's default
}

// AddMacvlan creates the container's macvlan on the master, born in the
// container's namespace under TempLinkName, renames it to the owner's
// IfName there and tags it with the owner's alias. It stays down. It
// returns the link's MAC. On error nothing is left.
//
// Equivalent: ip -n $masterns link add $tmp link $master netns $container type macvlan mode $mode;
// ip -n $container link set $tmp name $ifname alias …
func AddMacvlan(spec MacvlanSpec) (mac net.HardwareAddr, err error) {
	mode, ok := macvlanModes[spec.Mode]
	if !ok {
		return nil, fmt.Errorf("unknown macvlan mode %q", spec.Mode)
	}
	tmp := spec.Owner.TempLink()
	attrs := netlink.NewLinkAttrs()
	attrs.Name = tmp
	attrs.ParentIndex = spec.Master.Index
	attrs.MTU = spec.MTU
	attrs.HardwareAddr = spec.MAC
	if spec.MasterNS != spec.Container {
		attrs.Namespace = netlink.NsFd(spec.Container.Fd())
	}
	mv := &netlink.Macvlan{LinkAttrs: attrs, Mode: mode, BCQueueLen: spec.BcQueueLen}
	if err := spec.MasterNS.Netlink().LinkAdd(mv); err != nil {
		return nil, macvlanAddError(spec, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, DeleteMacvlan(spec.Container, spec.Owner))
		}
	}()
	c := spec.Container.Netlink()
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
	if alias := spec.Owner.Alias(); alias != "" {
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
		return cnierr.Env("CNI_IFNAME", spec.Owner.IfName, err, "a link %s (a previous ADD of this attachment not deleted) is in the container", spec.Owner.TempLink())
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
// Equivalent: ip -n $n link del $ifname
func DeleteMacvlan(n *netns.NS, o owner.Owner) error {
	h := n.Netlink()
	var errs []error
	for _, name := range []string{o.IfName, o.TempLink()} {
		l, err := h.LinkByName(name)
		if err != nil {
			if !IsNotFound(err) {
				errs = append(errs, fmt.Errorf("look up %s in %s: %w", name, n.Path(), err))
			}
			continue
		}
		if alias := l.Attrs().Alias; l.Type() != "macvlan" || alias != "" && alias != o.Alias() {
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
func CheckMacvlan(n *netns.NS, o owner.Owner, master Master, mode string) error {
	l, err := n.Netlink().LinkByName(o.IfName)
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
func NotifyNeighbours(n *netns.NS, ifName string) error {
	return n.Do(func() error {
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
// Equivalent: ip -n $host link set $name promisc on|off
func SetPromisc(host *netns.NS, name string, on bool) error {
	h := host.Netlink()
	l, err := h.LinkByName(name)
	if err != nil {
		if IsNotFound(err) {
			return fmt.Errorf("master %q: %w", name, ErrNoSuchLink)
		}
		return fmt.Errorf("look up master %q: %w", name, err)
	}
	if on {
		err = h.SetPromiscOn(l)
	} else {
		err = h.SetPromiscOff(l)
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
// Equivalent: ip -n $host link add name $probe type vlan id 1 (expect an error)
func VlanSupported(host *netns.NS) (bool, error) {
	h := host.Netlink()
	probe := &netlink.Vlan{LinkAttrs: netlink.LinkAttrs{Name: "bthvlanprobe"}, VlanId: 1}
	err := h.LinkAdd(probe)
	switch {
	case err == nil: // not expected: the kernel took it anyway
		if derr := h.LinkDel(probe); derr != nil && !IsNotFound(derr) {
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
