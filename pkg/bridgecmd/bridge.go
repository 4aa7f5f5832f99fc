// Package bridgecmd is the bridge plugin's ADD, DEL, CHECK, GC and STATUS:
// containers on a Linux bridge through veths, addresses from the IPAM
// plugin, the bridge as their gateway, masquerade out. The bridge plugin
// runs it over its own config; the overlay plugin over a bridge config it
// derives from the node agent's state. It touches, through a Kernel, the
// host's bridge, host veths, masquerade and macspoofchk netfilter state
// and the container's interface; files: attachment records under the data
// dir and flocks under the lock dir (/run/berth/lock).
package bridgecmd

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/netip"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/ipam"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/state"
)

// Plugin is the bridge plugin's commands, run over the network its Load
// makes of a command's arguments.
type Plugin struct {
	// Name prefixes log lines and STATUS errors: "bridge", "overlay".
	Name string
	// Load parses a command's config into the network to run over. The
	// bridge plugin parses its stdin as is (Bridge.Load); the overlay
	// plugin derives a bridge config from its own and the agent's state.
	Load func(args *skel.CmdArgs) (*Net, error)
	// Kernel opens what the commands change; nil is NewKernel.
	Kernel func() (Kernel, error)
	// IPAM reaches the IPAM plugin; nil is pkg/ipam.
	IPAM IPAM
	// LockDir holds the flocks on shared host state; "" is lock.Dir.
	LockDir string
}

// Net is what the bridge commands run over.
type Net struct {
	Conf *config.Bridge
	// IPAMConf is the network config the IPAM plugin is handed: the
	// bridge plugin's stdin, or the config the overlay plugin derived.
	IPAMConf []byte
	// MasqExempt is a network whose destinations are not masqueraded:
	// the overlay's cluster network, so that containers on different
	// hosts see each other's addresses. Invalid: none.
	MasqExempt netip.Prefix
}

// Bridge is the bridge plugin: its stdin is a bridge config.
var Bridge = Plugin{Name: "bridge", Load: func(args *skel.CmdArgs) (*Net, error) {
	conf, err := config.ParseBridge(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	return &Net{Conf: conf, IPAMConf: args.StdinData}, nil
}}

// cmd is one command's state: the network, the attachment, the kernel and
// the stores it acts on.
type cmd struct {
	p     Plugin
	args  *skel.CmdArgs
	net   *Net
	conf  *config.Bridge
	owner owner.Owner
	k     Kernel
	ipam  IPAM
	at    ipam.Attachment // the IPAM plugin's CNI_* values
	store state.Store
}

// begin parses the config and the runtime arguments every command needs
// and opens the kernel. The caller closes it (cmd.close).
func (p Plugin) begin(args *skel.CmdArgs) (*cmd, error) {
	n, err := p.Load(args)
	if err != nil {
		return nil, err
	}
	o, err := config.Attachment(n.Conf.Name, args.ContainerID, args.IfName)
	if err != nil {
		return nil, err
	}
	c, err := p.open(args, n)
	if err != nil {
		return nil, err
	}
	c.owner = o
	return c, nil
}

// open is begin for the commands that name no attachment (GC, STATUS).
func (p Plugin) open(args *skel.CmdArgs, n *Net) (*cmd, error) {
	newKernel := p.Kernel
	if newKernel == nil {
		newKernel = NewKernel
	}
	k, err := newKernel()
	if err != nil {
		return nil, err
	}
	c := &cmd{p: p, args: args, net: n, conf: n.Conf, k: k, ipam: p.IPAM,
		at: ipam.Of(args), store: state.Open(n.Conf.DataDir, n.Conf.Name)}
	if c.ipam == nil {
		c.ipam = pluginIPAM{}
	}
	return c, nil
}

func (c *cmd) close() {
	if err := c.k.Close(); err != nil {
		logf(c.p.Name, "close: %v", err)
	}
}

// lock takes the flock name in the plugin's lock dir, waiting lock.Wait.
func (c *cmd) lock(name string) (*lock.Lock, error) {
	return c.p.lock(name, lock.Wait)
}

func (p Plugin) lock(name string, wait time.Duration) (*lock.Lock, error) {
	dir := p.LockDir
	if dir == "" {
		dir = lock.Dir
	}
	return lock.AcquireIn(dir, name, wait)
}

// bridgeLock is the flock of the network's bridge: its creation and
// removal, its ports and its addresses change under it.
func (c *cmd) bridgeLock() (*lock.Lock, error) { return c.lock("bridge-" + c.conf.BrName) }

// masqBackend is the masquerade backend of the config: the one it names,
// else the one the host's NAT uses.
func (c *cmd) masqBackend() string {
	if c.conf.IPMasqBackend != nil {
		return *c.conf.IPMasqBackend
	}
	return c.k.DetectMasq()
}

// masqAddrs is what to masquerade for the container's addresses: each
// address with its subnet, or with Net.MasqExempt's length when that
// prefix holds it, so traffic to the whole exempt network keeps its source.
func (c *cmd) masqAddrs(addrs []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, len(addrs))
	for i, a := range addrs {
		out[i] = a
		if e := c.net.MasqExempt; e.IsValid() && e.Bits() < a.Bits() && e.Contains(a.Addr()) {
			out[i] = netip.PrefixFrom(a.Addr(), e.Bits())
		}
	}
	return out
}

// Status is the STATUS command.
func (p Plugin) Status(ctx context.Context, args *skel.CmdArgs) error {
	n, err := p.Load(args)
	if err != nil {
		return err
	}
	c, err := p.open(args, n)
	if err != nil {
		return p.notAvailable(err)
	}
	defer c.close()
	if c.conf.IPMasq {
		b, err := c.k.Masq(c.masqBackend())
		if err != nil {
			return p.notAvailable(err)
		}
		if _, err := b.List(c.conf.Name); err != nil {
			return p.notAvailable(err)
		}
	}
	if c.conf.IPAMConf.Type != "" {
		if err := c.ipam.Status(ctx, c.conf.IPAMConf.Type, n.IPAMConf, args.Path); err != nil {
			return p.notAvailable(err)
		}
	}
	return nil
}

// notAvailable marks a STATUS failure with the spec's code 50.
func (p Plugin) notAvailable(err error) error {
	return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("%s cannot serve ADD: %w", p.Name, err))
}

// printResult prints res in the config's version.
func printResult(res *current.Result, version string, out io.Writer) error {
	vres, err := res.GetAsVersion(version)
	if err != nil {
		return fmt.Errorf("convert result to %s: %w", version, err)
	}
	return vres.PrintTo(out)
}

// recordedAddrs are the addresses a complete record lists; none for an
// unfinished ADD (its IPAM result was never recorded).
func recordedAddrs(rec state.Record) []netip.Addr {
	if !rec.Complete {
		return nil
	}
	var out []netip.Addr
	for _, s := range rec.IPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil // not berth's writing: let the IPAM plugin search
		}
		out = append(out, p.Addr())
	}
	return out
}

// logf writes a diagnostic line to stderr: what goes wrong outside a
// command's own result (a sweep's failure, a close).
func logf(plugin, format string, args ...any) {
	log.Printf(plugin+": "+format, args...)
}
