// Package ipam delegates address management to the IPAM plugin a config
// names, by executing it from CNI_PATH as the spec's delegation describes,
// except host-local, which runs in-process on the pinned upstream library
// (hostlocal.go): same leases, files and lock, one exec fewer. Every call
// names the attachment it is for (the CNI_* values a delegated plugin
// gets); none reads the process's environment for it. It touches what the
// IPAM plugin touches (for host-local, files under its dataDir).
package ipam

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"sync"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// Attachment is what an IPAM call is for: the CNI_* values the plugin
// would be run with.
type Attachment struct {
	ContainerID string
	Netns       string
	IfName      string
	Args        string // CNI_ARGS
	Path        string // CNI_PATH, where delegated plugins are found
}

// Of is the attachment of a command's arguments.
func Of(args *skel.CmdArgs) Attachment {
	return Attachment{ContainerID: args.ContainerID, Netns: args.Netns, IfName: args.IfName, Args: args.Args, Path: args.Path}
}

func (a Attachment) invoke(command string) *invoke.Args {
	return &invoke.Args{Command: command, ContainerID: a.ContainerID, NetNS: a.Netns, IfName: a.IfName, PluginArgsStr: a.Args, Path: a.Path}
}

// exec runs the delegated plugin's command (not ADD) for a.
//
// Equivalent: CNI_COMMAND=$command CNI_CONTAINERID=… $CNI_PATH/$plugin < $netconf
func (a Attachment) exec(ctx context.Context, plugin, command string, netconf []byte) error {
	path, err := invoke.FindInPath(plugin, filepath.SplitList(a.Path))
	if err != nil {
		return err
	}
	return invoke.ExecPluginWithoutResult(ctx, path, netconf, a.invoke(command), nil)
}

// Add runs the IPAM plugin's ADD for a and returns its result in the
// current spec version.
func Add(ctx context.Context, plugin string, netconf []byte, a Attachment) (*current.Result, error) {
	return Prepare(plugin, netconf, a).Lease(ctx, false)
}

// Prepared is an IPAM ADD split in two. Prepare does what takes no lease
// (in-process host-local parses its config and opens its lease store), so
// it may run before the caller has recorded the attachment; Lease takes
// the lease, and Close is for a caller that will not.
type Prepared struct {
	plugin  string
	netconf []byte
	a       Attachment
	hl      *hostLocalLease
	err     error
}

// Prepare begins a's ADD with plugin.
func Prepare(plugin string, netconf []byte, a Attachment) *Prepared {
	p := &Prepared{plugin: plugin, netconf: netconf, a: a}
	if plugin == HostLocal {
		p.hl, p.err = prepareHostLocal(netconf, a)
	}
	return p
}

// Lease runs the ADD (once). fresh promises that the attachment holds no
// address (the caller has no record of it): in-process host-local then
// skips its scan of every lease file for a duplicate, whose cost grows
// with the network's leases.
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
	path, err := invoke.FindInPath(p.plugin, filepath.SplitList(p.a.Path))
	if err != nil {
		return nil, fmt.Errorf("ipam %s add: %w", p.plugin, err)
	}
	r, err := invoke.ExecPluginWithResult(ctx, path, p.netconf, p.a.invoke("ADD"), nil)
	if err != nil {
		return nil, fmt.Errorf("ipam %s add: %w", p.plugin, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("ipam %s add: convert result: %w", p.plugin, err)
	}
	return res, nil
}

// Close ends a Prepared whose Lease will not run; after a Lease it does
// nothing.
func (p *Prepared) Close() {
	if p.hl != nil {
		p.hl.close()
	}
}

// Del releases a's addresses. For an attachment of another container than
// the command's (GC's stale ones) a.Netns is empty.
func Del(ctx context.Context, plugin string, netconf []byte, a Attachment) error {
	if plugin == HostLocal {
		if err := hostLocalDel(netconf, a); err != nil {
			return fmt.Errorf("ipam %s del: %w", plugin, err)
		}
		return nil
	}
	if err := a.exec(ctx, plugin, "DEL", netconf); err != nil {
		return fmt.Errorf("ipam %s del: %w", plugin, err)
	}
	return nil
}

// DelKnown is Del for an attachment whose addresses the caller recorded
// at its ADD: in-process host-local then frees just those leases instead
// of reading every lease of the network. Without addresses it is Del.
func DelKnown(ctx context.Context, plugin string, netconf []byte, a Attachment, addrs []netip.Addr) error {
	if plugin != HostLocal || len(addrs) == 0 {
		return Del(ctx, plugin, netconf, a)
	}
	if err := hostLocalRelease(netconf, a, addrs); err != nil {
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

// Check asks the IPAM plugin to verify a.
func Check(ctx context.Context, plugin string, netconf []byte, a Attachment) error {
	if plugin == HostLocal {
		if err := hostLocalCheck(netconf, a); err != nil {
			return fmt.Errorf("ipam %s check: %w", plugin, err)
		}
		return nil
	}
	if err := a.exec(ctx, plugin, "CHECK", netconf); err != nil {
		return fmt.Errorf("ipam %s check: %w", plugin, err)
	}
	return nil
}

// Status asks the IPAM plugin whether it can serve ADDs; path is CNI_PATH.
func Status(ctx context.Context, plugin string, netconf []byte, path string) error {
	if err := (Attachment{Path: path}).exec(ctx, plugin, "STATUS", netconf); err != nil {
		return fmt.Errorf("ipam %s status: %w", plugin, err)
	}
	return nil
}

// GC passes a GC (with the valid attachments in netconf) to the IPAM
// plugin; path is CNI_PATH.
func GC(ctx context.Context, plugin string, netconf []byte, path string) error {
	if err := (Attachment{Path: path}).exec(ctx, plugin, "GC", netconf); err != nil {
		return fmt.Errorf("ipam %s gc: %w", plugin, err)
	}
	return nil
}

// ReleaseFor runs the IPAM plugin's DEL on behalf of another attachment
// (a stale one found by GC or the sweep): same config, that attachment's
// container ID and interface name, no netns.
func ReleaseFor(ctx context.Context, plugin string, netconf []byte, path, containerID, ifName string) error {
	a := Attachment{ContainerID: containerID, IfName: ifName, Path: path}
	if err := Del(ctx, plugin, netconf, a); err != nil {
		return fmt.Errorf("for %s/%s: %w", containerID, ifName, err)
	}
	return nil
}

// once makes a close safe to call again.
type once struct{ sync.Once }
