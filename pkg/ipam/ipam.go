// Package ipam delegates address management to the IPAM plugin a config
// names, by executing it from CNI_PATH as the spec's delegation describes,
// except host-local, which runs in-process on the pinned upstream library
// (hostlocal.go): same leases, files and lock, one exec fewer. It touches
// what the IPAM plugin touches (for host-local, files under its dataDir).
package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Add runs the IPAM plugin's ADD for the current attachment (the CNI_*
// environment) and returns its result in the current spec version.
func Add(ctx context.Context, plugin string, netconf []byte) (*current.Result, error) {
	return Prepare(plugin, netconf).Lease(ctx, false)
}

// AddNew is Add for an attachment the caller knows holds no address (it
// has no record of it): in-process host-local then skips its scan of every
// lease file for a duplicate, whose cost grows with the network's leases.
func AddNew(ctx context.Context, plugin string, netconf []byte) (*current.Result, error) {
	return Prepare(plugin, netconf).Lease(ctx, true)
}

// Prepared is an IPAM ADD split in two. Prepare does what takes no lease
// (in-process host-local parses its config and opens its lease store), so
// it may run before the caller has recorded the attachment; Lease takes
// the lease, and Close is for a caller that will not.
type Prepared struct {
	plugin  string
	netconf []byte
	hl      *hostLocalLease
	err     error
}

// Prepare begins the current attachment's ADD with plugin.
func Prepare(plugin string, netconf []byte) *Prepared {
	p := &Prepared{plugin: plugin, netconf: netconf}
	if plugin == HostLocal {
		p.hl, p.err = prepareHostLocal(netconf, fromEnv())
	}
	return p
}

// Lease runs the ADD (once); fresh is AddNew's promise that the
// attachment holds no address.
func (p *Prepared) Lease(ctx context.Context, fresh bool) (*current.Result, error) {
	if p.err != nil {
		return nil, fmt.Errorf("ipam %s add: %w", p.plugin, p.err)
	}
	if p.hl != nil {
		res, err := p.hl.take(fresh)
		if err != nil {
			return nil, fmt.Errorf("ipam %s add: %w", p.plugin, err)
		}
		return res, nil
	}
	r, err := invoke.DelegateAdd(ctx, p.plugin, p.netconf, nil)
	if err != nil {
		return nil, fmt.Errorf("ipam %s add: %w", p.plugin, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("ipam %s add: convert result: %w", p.plugin, err)
	}
	return res, nil
}

// Close ends a Prepared whose Lease will not run.
func (p *Prepared) Close() {
	if p.hl != nil {
		p.hl.close()
	}
}

// Del releases the current attachment's addresses.
func Del(ctx context.Context, plugin string, netconf []byte) error {
	if plugin == HostLocal {
		if err := hostLocalDel(netconf, fromEnv()); err != nil {
			return fmt.Errorf("ipam %s del: %w", plugin, err)
		}
		return nil
	}
	if err := invoke.DelegateDel(ctx, plugin, netconf, nil); err != nil {
		return fmt.Errorf("ipam %s del: %w", plugin, err)
	}
	return nil
}

// DelKnown is Del for an attachment whose addresses the caller recorded
// at its ADD: in-process host-local then frees just those leases instead
// of reading every lease of the network. Without addresses it is Del.
func DelKnown(ctx context.Context, plugin string, netconf []byte, addrs []netip.Addr) error {
	if plugin != HostLocal || len(addrs) == 0 {
		return Del(ctx, plugin, netconf)
	}
	if err := hostLocalRelease(netconf, fromEnv(), addrs); err != nil {
		return fmt.Errorf("ipam %s del: %w", plugin, err)
	}
	return nil
}

// NeedsInterface reports whether the IPAM plugin talks through the
// container's interface: dhcp's daemon sends DHCP over it. Such a plugin
// gets the interface up before its ADD, and its DEL runs before the
// interface goes (else its RELEASE is lost, as upstream bridge loses it:
// containernetworking/plugins#791).
func NeedsInterface(plugin string) bool { return plugin == "dhcp" }

// Check asks the IPAM plugin to verify the current attachment.
func Check(ctx context.Context, plugin string, netconf []byte) error {
	if plugin == HostLocal {
		if err := hostLocalCheck(netconf, fromEnv()); err != nil {
			return fmt.Errorf("ipam %s check: %w", plugin, err)
		}
		return nil
	}
	if err := invoke.DelegateCheck(ctx, plugin, netconf, nil); err != nil {
		return fmt.Errorf("ipam %s check: %w", plugin, err)
	}
	return nil
}

// Status asks the IPAM plugin whether it can serve ADDs.
func Status(ctx context.Context, plugin string, netconf []byte) error {
	if err := invoke.DelegateStatus(ctx, plugin, netconf, nil); err != nil {
		return fmt.Errorf("ipam %s status: %w", plugin, err)
	}
	return nil
}

// GC passes a GC (with the valid attachments in netconf) to the IPAM plugin.
func GC(ctx context.Context, plugin string, netconf []byte) error {
	if err := invoke.DelegateGC(ctx, plugin, netconf, nil); err != nil {
		return fmt.Errorf("ipam %s gc: %w", plugin, err)
	}
	return nil
}

// ReleaseFor runs the IPAM plugin's DEL on behalf of another attachment
// (a stale one found by GC): same config, that attachment's container ID
// and interface name, no netns.
func ReleaseFor(ctx context.Context, plugin string, netconf []byte, containerID, ifName string) error {
	if plugin == HostLocal {
		if err := hostLocalDel(netconf, attachment{containerID: containerID, ifName: ifName}); err != nil {
			return fmt.Errorf("ipam %s del for %s/%s: %w", plugin, containerID, ifName, err)
		}
		return nil
	}
	cniPath := os.Getenv("CNI_PATH")
	path, err := invoke.FindInPath(plugin, filepath.SplitList(cniPath))
	if err != nil {
		return fmt.Errorf("ipam %s: %w", plugin, err)
	}
	args := &invoke.Args{Command: "DEL", ContainerID: containerID, IfName: ifName, Path: cniPath}
	if err := invoke.ExecPluginWithoutResult(ctx, path, netconf, args, nil); err != nil {
		return fmt.Errorf("ipam %s del for %s/%s: %w", plugin, containerID, ifName, err)
	}
	return nil
}
