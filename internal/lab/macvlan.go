package lab

// Readers and knobs the macvlan tests need: a namespace's neighbour table
// (what a LAN host believes a container's MAC is), a link's promiscuous
// mode, a link with all its netlink attributes, ADD with the result in 1.0
// form, and a check of a CNI error's code and message. The last three are
// not macvlan's own: any plugin's tests can use them.

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Neighbour is one entry of a neighbour (ARP or NDP) table.
type Neighbour struct {
	IP    netip.Addr
	MAC   string // empty while incomplete
	Dev   string
	State int // netlink.NUD_*
}

// Neighbours lists this namespace's neighbour entries of both families.
//
// Equivalent: ip -n $ns neigh; ip -n $ns -6 neigh
func (n *NS) Neighbours() ([]Neighbour, error) {
	var out []Neighbour
	err := n.withHandle(func(h *netlink.Handle) error {
		names, err := n.linkNames(h)
		if err != nil {
			return err
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			ns, err := h.NeighList(0, fam)
			if err != nil {
				return fmt.Errorf("list neighbours in %s: %w", n.Name, err)
			}
			for _, nb := range ns {
				ip, ok := netip.AddrFromSlice(nb.IP)
				if !ok {
					continue
				}
				e := Neighbour{IP: ip.Unmap(), Dev: names[nb.LinkIndex], State: nb.State}
				if len(nb.HardwareAddr) > 0 {
					e.MAC = nb.HardwareAddr.String()
				}
				out = append(out, e)
			}
		}
		return nil
	})
	return out, err
}

// linkNames maps this namespace's link indexes to names.
func (n *NS) linkNames(h *netlink.Handle) (map[int]string, error) {
	ls, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links in %s: %w", n.Name, err)
	}
	names := map[int]string{}
	for _, l := range ls {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	return names, nil
}

// NeighbourMAC returns the MAC this namespace holds for ip, or an error
// wrapping ErrNotFound when it holds none (or an incomplete entry).
func (n *NS) NeighbourMAC(ip netip.Addr) (string, error) {
	ns, err := n.Neighbours()
	if err != nil {
		return "", err
	}
	for _, nb := range ns {
		if nb.IP == ip && nb.MAC != "" {
			return nb.MAC, nil
		}
	}
	return "", fmt.Errorf("neighbour %s in %s: %w", ip, n.Name, ErrNotFound)
}

// Promisc reports whether promiscuous mode is set on link name (IFF_PROMISC).
//
// Equivalent: ip -n $ns link show $name | grep PROMISC
func (n *NS) Promisc(name string) (bool, error) {
	var on bool
	err := n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		// The flag a user sets, not the kernel's promiscuity count (which
		// bridge ports and passthru macvlans raise too).
		on = l.Attrs().RawFlags&unix.IFF_PROMISC != 0
		return nil
	})
	return on, err
}

// SetPromisc turns promiscuous mode of link name on or off.
//
// Equivalent: ip -n $ns link set $name promisc on|off
func (n *NS) SetPromisc(name string, on bool) error {
	return n.withHandle(func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		if on {
			err = h.SetPromiscOn(l)
		} else {
			err = h.SetPromiscOff(l)
		}
		if err != nil {
			return fmt.Errorf("set promisc %v on %s in %s: %w", on, name, n.Name, err)
		}
		return nil
	})
}

// NetlinkLink reads link name of this namespace through netlink, with
// every attribute netlink decodes (a macvlan's mode and parent, say).
//
// Equivalent: ip -n $ns -d link show $name
func (n *NS) NetlinkLink(name string) (netlink.Link, error) {
	var l netlink.Link
	err := n.withHandle(func(h *netlink.Handle) error {
		var err error
		if l, err = h.LinkByName(name); err != nil {
			return fmt.Errorf("link %s in %s: %w", name, n.Name, err)
		}
		return nil
	})
	return l, err
}

// AddResult runs ADD over the list and returns the result in 1.0 form.
func (r *Runner) AddResult(ctx context.Context, list *libcni.NetworkConfigList, a Attachment) (*types100.Result, error) {
	res, err := r.Add(ctx, list, a)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", a.ContainerID, err)
	}
	out, err := Result100(res)
	if err != nil {
		return nil, fmt.Errorf("ADD %s: %w", a.ContainerID, err)
	}
	return out, nil
}

// CNIError checks that err is a CNI error (*types.Error) with code whose
// message contains each of names, and says what differs (nil: all match).
func CNIError(err error, code uint, names ...string) error {
	if err == nil {
		return fmt.Errorf("got success, want CNI error code %d", code)
	}
	var te *types.Error
	if !errors.As(err, &te) {
		return fmt.Errorf("error %v (%T) is not a CNI error, want code %d", err, err, code)
	}
	var errs []error
	if te.Code != code {
		errs = append(errs, fmt.Errorf("CNI error code %d, want %d: %s", te.Code, code, te.Error()))
	}
	for _, s := range names {
		if !strings.Contains(te.Error(), s) {
			errs = append(errs, fmt.Errorf("error %q does not name %q", te.Error(), s))
		}
	}
	return errors.Join(errs...)
}
