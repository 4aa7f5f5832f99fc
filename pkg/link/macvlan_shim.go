package link

// The host shim: the host's own macvlan on a master, so that the host can
// reach the macvlan containers on it. A master never passes frames between
// its own stack and its macvlans, so without one the host cannot talk to
// its containers; a macvlan in bridge mode on the same master can. All of
// it is netlink in the host namespace each function is given.

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cidr"
	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/netns"
)

// ShimPrefix starts the name of every host shim. Shim names are an API once
// released: never change the scheme.
const ShimPrefix = "bshim"

// ShimName is the host shim's name for a master: "bshim" plus 10 hex
// digits of SHA-256(master name), 15 bytes. One shim per master, shared by
// every network on it.
func ShimName(master string) string {
	sum := sha256.Sum256([]byte(master))
	return ShimPrefix + hex.EncodeToString(sum[:])[:10]
}

// ShimAlias tags the shim with its master: "berth:shim/<master>".
func ShimAlias(master string) string { return "berth:shim/" + master }

// EnsureShim creates the master's shim if it is missing and brings it up: a
// macvlan in bridge mode with no address but its IPv6 link-local one, which
// takes no router advertisement (the LAN's prefixes are the master's
// business). A shim on another parent (the master was re-created) is
// replaced; a link of that name that is not a macvlan is an error.
//
// Equivalent: ip link add $shim link $master type macvlan mode bridge;
// sysctl -w net.ipv6.conf.$shim.accept_ra=0 net.ipv6.conf.$shim.accept_dad=0; ip link set $shim up
func EnsureShim(host *netns.NS, m Master) (created bool, err error) {
	h := host.Netlink()
	name := ShimName(m.Name)
	l, err := h.LinkByName(name)
	switch {
	case err != nil && !IsNotFound(err):
		return false, fmt.Errorf("look up host shim %s: %w", name, err)
	case err == nil && l.Type() != "macvlan":
		return false, cnierr.WithCode(cnierr.CodeHostState, fmt.Errorf("link %s exists but is a %s, not berth's host shim for master %q", name, l.Type(), m.Name))
	case err == nil && l.Attrs().ParentIndex == m.Index:
		if l.Attrs().Flags&net.FlagUp == 0 {
			if err := h.LinkSetUp(l); err != nil {
				return false, fmt.Errorf("set host shim %s up: %w", name, err)
			}
		}
		return false, nil
	case err == nil:
		if err := DeleteShim(host, m.Name); err != nil {
			return false, err
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.ParentIndex = m.Index
	if err := h.LinkAdd(&netlink.Macvlan{LinkAttrs: attrs, Mode: netlink.MACVLAN_MODE_BRIDGE}); err != nil {
		return false, fmt.Errorf("create host shim %s on master %q: %w", name, m.Name, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, DeleteShim(host, m.Name))
		}
	}()
	if l, err = h.LinkByName(name); err != nil {
		return true, fmt.Errorf("look up new host shim %s: %w", name, err)
	}
	if err := h.LinkSetAlias(l, ShimAlias(m.Name)); err != nil {
		return true, fmt.Errorf("tag host shim %s: %w", name, err)
	}
	for _, key := range []string{"accept_ra", "accept_dad"} {
		err := host.WriteSysctl("ipv6/conf/"+name+"/"+key, "0")
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return true, err
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return true, fmt.Errorf("set host shim %s up: %w", name, err)
	}
	return true, nil
}

// DeleteShim deletes the master's shim (and with it its routes and
// neighbour entries); a missing one is not an error.
//
// Equivalent: ip -n $host link del $shim
func DeleteShim(host *netns.NS, master string) error {
	h := host.Netlink()
	l, err := h.LinkByName(ShimName(master))
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up host shim %s: %w", ShimName(master), err)
	}
	if l.Type() != "macvlan" {
		return nil
	}
	if err := h.LinkDel(l); err != nil && !IsNotFound(err) {
		return fmt.Errorf("delete host shim %s: %w", ShimName(master), err)
	}
	return nil
}

// ShimPeer is one container as the host reaches it through the shim.
type ShimPeer struct {
	MAC   net.HardwareAddr
	Addrs []netip.Addr
}

// AddShimPeer routes each of the container's addresses through the master's
// shim, with a permanent neighbour entry so the shim never has to ask
// (its ARP requests would carry the master's address and the shim's MAC to
// the whole LAN). IPv4 routes take the master's address on the container's
// subnet as their source, which the container reaches through the shim too
// (the host answers ARP for it there); IPv6 ones take the shim's link-local
// address, since the host answers neighbour solicitations only for
// addresses on the interface asked.
//
// Equivalent: ip neigh replace $ip lladdr $mac dev $shim nud permanent;
// ip route replace $ip dev $shim src $src
func AddShimPeer(host *netns.NS, m Master, p ShimPeer) error {
	h := host.Netlink()
	shim, err := h.LinkByName(ShimName(m.Name))
	if err != nil {
		return fmt.Errorf("host shim %s for master %q: %w", ShimName(m.Name), m.Name, err)
	}
	for _, a := range p.Addrs {
		src, err := shimSource(h, shim, m, a)
		if err != nil {
			return err
		}
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		nb := &netlink.Neigh{LinkIndex: shim.Attrs().Index, Family: fam, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: p.MAC}
		if err := h.NeighSet(nb); err != nil {
			return fmt.Errorf("neighbour %s lladdr %s on host shim %s: %w", a, p.MAC, shim.Attrs().Name, err)
		}
		r := shimRoute(shim, a)
		if src.IsValid() {
			r.Src = src.AsSlice()
		}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("route %s dev %s src %s: %w", a, shim.Attrs().Name, src, err)
		}
	}
	return nil
}

func shimRoute(shim netlink.Link, a netip.Addr) *netlink.Route {
	return &netlink.Route{LinkIndex: shim.Attrs().Index, Dst: cidr.IPNet(netip.PrefixFrom(a, a.BitLen())), Scope: netlink.SCOPE_LINK}
}

// shimSource picks the source address of the host's route to a: see
// AddShimPeer. No IPv4 address of the master's on a's subnet: none (the
// kernel picks).
func shimSource(h *netlink.Handle, shim netlink.Link, m Master, a netip.Addr) (netip.Addr, error) {
	if a.Is4() {
		for _, p := range m.Addrs {
			if p.Addr().Is4() && p.Contains(a) {
				return p.Addr(), nil
			}
		}
		return netip.Addr{}, nil
	}
	// The link-local address appears when the shim comes up; with
	// accept_dad off it is usable at once, but the kernel adds it from a
	// work queue.
	deadline := time.Now().Add(3 * time.Second)
	for {
		addrs, err := h.AddrList(shim, netlink.FAMILY_V6)
		if err != nil {
			return netip.Addr{}, fmt.Errorf("list addresses of host shim %s: %w", shim.Attrs().Name, err)
		}
		for _, ad := range addrs {
			ip, ok := netip.AddrFromSlice(ad.IP)
			if ok && ip.IsLinkLocalUnicast() && ad.Flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) == 0 {
				return ip, nil
			}
		}
		if time.Now().After(deadline) {
			return netip.Addr{}, fmt.Errorf("host shim %s has no usable IPv6 link-local address to reach %s from", shim.Attrs().Name, a)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DeleteShimPeer removes the routes and neighbour entries of addrs from the
// master's shim; missing ones (or a missing shim) are not an error.
//
// Equivalent: ip -n $host route del $ip dev $shim; ip -n $host neigh del $ip dev $shim
func DeleteShimPeer(host *netns.NS, master string, addrs []netip.Addr) error {
	h := host.Netlink()
	shim, err := h.LinkByName(ShimName(master))
	if err != nil {
		if IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("look up host shim %s: %w", ShimName(master), err)
	}
	var errs []error
	for _, a := range addrs {
		if err := h.RouteDel(shimRoute(shim, a)); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete route %s dev %s: %w", a, shim.Attrs().Name, err))
		}
		nb := &netlink.Neigh{LinkIndex: shim.Attrs().Index, IP: a.AsSlice()}
		if err := h.NeighDel(nb); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("delete neighbour %s dev %s: %w", a, shim.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

// CheckShim verifies that the master's shim is up and routes each of the
// peer's addresses to its MAC, and names the first thing missing.
func CheckShim(host *netns.NS, m Master, p ShimPeer) error {
	h := host.Netlink()
	name := ShimName(m.Name)
	shim, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host shim %s for master %q missing: %w", name, m.Name, err)
	}
	if shim.Attrs().ParentIndex != m.Index {
		return fmt.Errorf("host shim %s is not on master %q", name, m.Name)
	}
	if shim.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("host shim %s is down", name)
	}
	for _, a := range p.Addrs {
		fam := netlink.FAMILY_V4
		if a.Is6() {
			fam = netlink.FAMILY_V6
		}
		routes, err := h.RouteListFiltered(fam, shimRoute(shim, a), netlink.RT_FILTER_OIF|netlink.RT_FILTER_DST)
		if err != nil {
			return fmt.Errorf("list routes of host shim %s: %w", name, err)
		}
		if len(routes) == 0 {
			return fmt.Errorf("host route %s dev %s missing", a, name)
		}
		neighs, err := h.NeighList(shim.Attrs().Index, fam)
		if err != nil {
			return fmt.Errorf("list neighbours of host shim %s: %w", name, err)
		}
		found := false
		for _, nb := range neighs {
			ip, _ := cidr.Addr(nb.IP)
			if ip == a && nb.HardwareAddr.String() == p.MAC.String() {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("neighbour entry %s lladdr %s on host shim %s missing", a, p.MAC, name)
		}
	}
	return nil
}
