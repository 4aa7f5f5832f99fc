package lab

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"github.com/vishvananda/netns"

	"github.com/berth-cni/berth/pkg/cidr"
)

// HostVethPrefix starts the name of every host-side veth berth creates.
const HostVethPrefix = "bth"

// AttachmentAlias is the alias berth sets on the host veth of an attachment.
func AttachmentAlias(network, containerID, ifName string) string {
	return fmt.Sprintf("berth:%s/%s/%s", network, containerID, ifName)
}

// HostVeths lists the links of this namespace named like berth's host veths.
func (n *NS) HostVeths() ([]Link, error) {
	ls, err := n.Links()
	if err != nil {
		return nil, err
	}
	var out []Link
	for _, l := range ls {
		if strings.HasPrefix(l.Name, HostVethPrefix) {
			out = append(out, l)
		}
	}
	return out, nil
}

// HostVethsOf lists berth's host veths whose alias names the container
// (any interface name) on the network.
func (n *NS) HostVethsOf(network, containerID string) ([]Link, error) {
	all, err := n.HostVeths()
	if err != nil {
		return nil, err
	}
	prefix := fmt.Sprintf("berth:%s/%s/", network, containerID)
	var out []Link
	for _, l := range all {
		if strings.HasPrefix(l.Alias, prefix) {
			out = append(out, l)
		}
	}
	return out, nil
}

// LeaseFiles returns the host-local lease files under dataDir/network held
// by containerID. host-local writes one file per address, named after the
// address, holding "<containerID>\r\n<ifname>".
func LeaseFiles(dataDir, network, containerID string) ([]string, error) {
	dir := filepath.Join(dataDir, network)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range ents {
		if _, err := netip.ParseAddr(e.Name()); err != nil || e.IsDir() {
			continue // lock, last_reserved_ip.N
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		if id, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n"); strings.TrimSpace(id) == containerID {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}

// NetfilterDump returns a text rendering of the netfilter state of this
// namespace and says how it was read. nftables: `nft list ruleset` when the
// nft binary exists, else an in-process listing through netlink
// (NftDumpNetlink). iptables: `iptables-save` and `ip6tables-save` when
// those exist (iptables-nft rules appear in the nft listing too, but their
// comments only here).
func (n *NS) NetfilterDump(ctx context.Context) (string, string, error) {
	var b strings.Builder
	var how []string
	if _, err := exec.LookPath("nft"); err == nil {
		out, err := n.Output(ctx, "nft", "list", "ruleset")
		if err != nil {
			return "", "", err
		}
		b.Write(out)
		how = append(how, "nft list ruleset")
	} else {
		s, err := n.NftDumpNetlink()
		if err != nil {
			return "", "", err
		}
		b.WriteString(s)
		how = append(how, "nftables netlink")
	}
	for _, tool := range []string{"iptables-save", "ip6tables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			continue
		}
		out, err := n.Output(ctx, tool)
		if err != nil {
			return "", "", err
		}
		b.Write(out)
		how = append(how, tool)
	}
	return b.String(), strings.Join(how, ", "), nil
}

// NftDumpNetlink lists the nftables state of this namespace in-process.
//
// Equivalent (roughly): ip netns exec $ns nft list ruleset
func (n *NS) NftDumpNetlink() (string, error) {
	h, err := netns.GetFromPath(n.Path)
	if err != nil {
		return "", err
	}
	defer h.Close()
	var c *nftables.Conn
	err = n.Do(func() error {
		var cerr error
		c, cerr = nftables.New(nftables.WithNetNSFd(int(h)), nftables.AsLasting())
		return cerr
	})
	if err != nil {
		return "", fmt.Errorf("nftables conn in %s: %w", n.Name, err)
	}
	defer c.CloseLasting()
	var b strings.Builder
	tables, err := c.ListTables()
	if err != nil {
		return "", fmt.Errorf("list tables in %s: %w", n.Name, err)
	}
	chains, err := c.ListChains()
	if err != nil {
		return "", fmt.Errorf("list chains in %s: %w", n.Name, err)
	}
	for _, t := range tables {
		fmt.Fprintf(&b, "table %s %s\n", familyName(t.Family), t.Name)
		sets, err := c.GetSets(t)
		if err != nil {
			return "", fmt.Errorf("list sets of %s: %w", t.Name, err)
		}
		for _, s := range sets {
			fmt.Fprintf(&b, "  set %s comment %q\n", s.Name, s.Comment)
			els, err := c.GetSetElements(s)
			if err != nil {
				return "", fmt.Errorf("list elements of %s/%s: %w", t.Name, s.Name, err)
			}
			for _, e := range els {
				fmt.Fprintf(&b, "    element %x comment %q\n", e.Key, e.Comment)
			}
		}
		for _, ch := range chains {
			if ch.Table.Name != t.Name || ch.Table.Family != t.Family {
				continue
			}
			fmt.Fprintf(&b, "  chain %s\n", ch.Name)
			rules, err := c.GetRules(t, ch)
			if err != nil {
				return "", fmt.Errorf("list rules of %s/%s: %w", t.Name, ch.Name, err)
			}
			for _, r := range rules {
				comment, _ := userdata.GetString(r.UserData, userdata.TypeComment)
				fmt.Fprintf(&b, "    rule handle %d (%d exprs) comment %q\n", r.Handle, len(r.Exprs), comment)
			}
		}
	}
	return b.String(), nil
}

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyARP:
		return "arp"
	case nftables.TableFamilyNetdev:
		return "netdev"
	}
	return fmt.Sprintf("family%d", f)
}

// LinesContaining returns the lines of text that contain needle.
func LinesContaining(text, needle string) []string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, needle) {
			out = append(out, strings.TrimSpace(l))
		}
	}
	return out
}

// Result100 converts any CNI result to the 1.0.0 types (the cni library's
// conversion).
func Result100(r types.Result) (*types100.Result, error) {
	if r == nil {
		return nil, errors.New("nil result")
	}
	return types100.NewResultFromResult(r)
}

// ResultAddrs returns the addresses (with prefix length) of a result.
func ResultAddrs(r types.Result) ([]netip.Prefix, error) {
	res, err := Result100(r)
	if err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for _, ip := range res.IPs {
		if p, ok := cidr.Prefix(&ip.Address); ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// Pick returns the first address of the family (4 or 6) in ps.
func Pick(ps []netip.Prefix, family int) (netip.Prefix, bool) {
	for _, p := range ps {
		if (family == 4) == p.Addr().Is4() {
			return p, true
		}
	}
	return netip.Prefix{}, false
}
