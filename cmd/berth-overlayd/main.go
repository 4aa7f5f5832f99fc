// Command berth-overlayd is the overlay node agent: one process per host
// and overlay network. It leases the host's subnet of the cluster network
// in a store (etcd, or a shared directory), programs the network's VXLAN
// device with a route, neighbour and FDB entry per remote host, and writes
// the state file the overlay CNI plugin reads. The logic is package
// pkg/overlay/agent; this file parses flags and wires.
//
//	berth-overlayd -network ov -cidr 10.244.0.0/16 -store etcd -etcd-endpoints http://10.0.0.1:2379
//	berth-overlayd -network ov -cidr 10.244.0.0/16 -store etcd -etcd-endpoints https://10.0.0.1:2379 \
//		-etcd-ca ca.pem -etcd-cert node.pem -etcd-key node-key.pem -etcd-user berth -etcd-password-file pw
//	berth-overlayd -network ov -cidr 10.244.0.0/16 -store file -store-dir /srv/berth-overlay
//
// SIGTERM and SIGINT stop it (exit 0), leaving the device and the lease
// (which expires after -lease-ttl unless -release-on-exit).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/berth-cni/berth/pkg/buildinfo"
	"github.com/berth-cni/berth/pkg/overlay"
	"github.com/berth-cni/berth/pkg/overlay/ack"
	"github.com/berth-cni/berth/pkg/overlay/agent"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/etcd"
	"github.com/berth-cni/berth/pkg/overlay/store/file"
)

// set reports whether flag name was given on the command line.
func set(fs *flag.FlagSet, name string) bool {
	found := false
	fs.Visit(func(f *flag.Flag) { found = found || f.Name == name })
	return found
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// options are the parsed flags.
type options struct {
	agent    agent.Config // without Store, Listener and Log
	store    string       // "file" or "etcd"
	storeDir string
	etcd     etcd.Config
	listen   string
}

// parseFlags turns the command line into options; hostname supplies the
// default -node. Errors name the flag and its value.
func parseFlags(args []string, stderr io.Writer, hostname func() (string, error)) (options, error) {
	fs := flag.NewFlagSet("berth-overlayd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	network := fs.String("network", "", "overlay network name (required; the same on every host)")
	cidr := fs.String("cidr", "", "cluster network, cut into per-host subnets (required), e.g. 10.244.0.0/16")
	subnetLen := fs.Int("subnet-len", 24, "prefix length of each host's subnet")
	vni := fs.Uint("vni", 1, "VXLAN network identifier")
	port := fs.Uint("port", 4789, "VXLAN UDP destination port")
	backend := fs.String("store", "", "cluster store: file or etcd (required)")
	storeDir := fs.String("store-dir", "", "directory of the file store, shared by the hosts")
	var ef etcdFlags
	ef.register(fs)
	node := fs.String("node", "", "this host's name in the store (default: the hostname)")
	underlay := fs.String("underlay", "", "interface the VXLAN packets leave by (default: the IPv4 default route's)")
	vtep := fs.String("vtep", "", "this host's underlay address (default: the underlay's first global IPv4 address)")
	mtu := fs.Int("mtu", 0, "MTU of the VXLAN device and the containers (0: the underlay's less 50)")
	stateDir := fs.String("state-dir", overlay.DefaultStateDir, "where the state file for the CNI plugin goes")
	listen := fs.String("listen", "127.0.0.1:9614", "address for /healthz and /metrics (empty: none)")
	ttl := fs.Duration("lease-ttl", 30*time.Second, "subnet lease TTL: a host gone this long leaves the overlay")
	release := fs.Bool("release-on-exit", false, "delete the lease on exit (the subnet is then free: containers lose their addresses)")
	ackBound := fs.Duration("ack-bound", ack.DefaultBound, "how long to wait for a peer to acknowledge this host's lease before reporting it and being ready without it")
	encrypt := fs.Bool("encrypt", false, "encrypt the hosts' VXLAN with ESP (AES-GCM, per host pair keys); every host of the network must agree")
	rotation := fs.Duration("key-rotation", 12*time.Hour, "with -encrypt: how often the network's key ring gets a new key")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(args); err != nil {
		return options{}, err
	}
	if *version {
		fmt.Fprintln(stderr, buildinfo.String("berth-overlayd"))
		return options{}, flag.ErrHelp
	}
	if fs.NArg() > 0 {
		return options{}, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	o := options{store: *backend, storeDir: *storeDir, listen: *listen}
	c := &o.agent
	c.Network = store.Network{Name: *network, SubnetLen: *subnetLen}
	c.Underlay, c.MTU, c.StateDir, c.LeaseTTL, c.ReleaseOnExit, c.AckBound = *underlay, *mtu, *stateDir, *ttl, *release, *ackBound

	if *network == "" {
		return options{}, errors.New("-network: a network name is required")
	}
	if *cidr == "" {
		return options{}, errors.New("-cidr: the cluster network is required, e.g. -cidr 10.244.0.0/16")
	}
	var err error
	if c.Network.CIDR, err = netip.ParsePrefix(*cidr); err != nil {
		return options{}, fmt.Errorf("-cidr %q: %w", *cidr, err)
	}
	if *vni < 1 || *vni > store.MaxVNI {
		return options{}, fmt.Errorf("-vni %d: must be between 1 and %d", *vni, store.MaxVNI)
	}
	c.Network.VNI = uint32(*vni)
	if *port < 1 || *port > 65535 {
		return options{}, fmt.Errorf("-port %d: must be between 1 and 65535", *port)
	}
	c.Network.Port = uint16(*port)
	if *encrypt {
		if *rotation < store.MinKeyRotation {
			return options{}, fmt.Errorf("-key-rotation %v: must be at least %v", *rotation, store.MinKeyRotation)
		}
		c.Network.Encryption, c.Network.KeyRotation = store.EncryptESP, *rotation
	} else if set(fs, "key-rotation") {
		return options{}, fmt.Errorf("-key-rotation %v: only with -encrypt", *rotation)
	}
	if err = c.Network.Validate(); err != nil {
		return options{}, err
	}
	if *vtep != "" {
		if c.VTEP, err = netip.ParseAddr(*vtep); err != nil || !c.VTEP.Is4() {
			return options{}, fmt.Errorf("-vtep %q: not an IPv4 address", *vtep)
		}
	}
	if *mtu != 0 && (*mtu < 576 || *mtu > 65535) {
		return options{}, fmt.Errorf("-mtu %d: must be 0 (automatic) or between 576 and 65535", *mtu)
	}
	if *ttl < time.Second {
		return options{}, fmt.Errorf("-lease-ttl %v: must be at least 1s", *ttl)
	}
	if *ackBound <= 0 {
		return options{}, fmt.Errorf("-ack-bound %v: must be positive", *ackBound)
	}
	if *stateDir == "" {
		return options{}, errors.New("-state-dir: a directory is required")
	}
	switch *backend {
	case "file":
		if *storeDir == "" {
			return options{}, errors.New("-store-dir: the file store needs a directory")
		}
	case "etcd":
		if o.etcd, err = ef.config(stderr); err != nil {
			return options{}, err
		}
	default:
		return options{}, fmt.Errorf("-store %q: must be file or etcd", *backend)
	}
	c.Node = *node
	if c.Node == "" {
		if c.Node, err = hostname(); err != nil || c.Node == "" {
			return options{}, fmt.Errorf("-node: no hostname to default to (%v): set one", err)
		}
	}
	return o, nil
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	o, err := parseFlags(args, stderr, os.Hostname)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-overlayd: %v\n", err)
		return 2
	}
	var st store.Store
	if o.store == "file" {
		st, err = file.New(o.storeDir)
	} else {
		st, err = openEtcd(ctx, o.etcd, stderr)
	}
	if err != nil && ctx.Err() != nil {
		return 0 // stopped while waiting for etcd
	}
	if err != nil {
		fmt.Fprintf(stderr, "berth-overlayd: %v\n", err)
		return 1
	}
	defer st.Close()
	cfg := o.agent
	cfg.Store, cfg.Log = st, stderr
	if o.listen != "" {
		if cfg.Listener, err = net.Listen("tcp", o.listen); err != nil {
			fmt.Fprintf(stderr, "berth-overlayd: -listen: %v\n", err)
			return 1
		}
	}
	a, err := agent.New(cfg)
	if err == nil {
		err = a.Run(ctx)
	}
	if err != nil {
		if cfg.Listener != nil {
			cfg.Listener.Close() // New failed before Run took it over
		}
		fmt.Fprintf(stderr, "berth-overlayd: %v\n", err)
		return 1
	}
	return 0
}
