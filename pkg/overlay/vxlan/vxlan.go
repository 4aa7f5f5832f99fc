// Package vxlan programs one host's side of the overlay: the VXLAN device
// of a network and, for every remote host, the route, permanent neighbour
// and FDB entry that reach it (flannel's vxlan model: O(hosts) kernel
// state, no learning, no multicast).
//
// It touches, with netlink in the network namespace it is given (a
// *netns.NS), that namespace's links, addresses, main-table routes,
// neighbours and VXLAN FDB entries. What to program is computed by pure
// code over plain values: package peerplan (the peers, the entries they
// need, the sync plan) and DeviceName here; this package reads the kernel
// into those values and applies the plans.
package vxlan

import (
	"errors"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// isNotFound reports a netlink "no such object" answer: ENOENT, ESRCH
// (routes), ENODEV, or netlink's own LinkNotFoundError.
func isNotFound(err error) bool {
	var lnf netlink.LinkNotFoundError
	return errors.As(err, &lnf) || errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV)
}
