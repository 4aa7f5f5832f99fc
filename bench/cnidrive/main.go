// Command cnidrive times CNI chains driven by libcni in-process, the way
// containerd and kubelet's runtimes call plugins (they link libcni: no
// cnitool process per call). bench/run.sh -l runs it; see bench/README.md.
//
//	cnidrive -n N -o FILE [-hostport BASE] -chain SPEC [-chain SPEC...]
//
// SPEC is comma-separated key=value pairs, all required:
//
//	label=NAME          the chain's name in FILE
//	hostns=PATH         network namespace the plugins run in (the "host")
//	net=NAME            network name of the conflist
//	confdir=DIR         directory holding the conflist (libcni.LoadConfList)
//	cni-path=DIR[:DIR]  where libcni finds the plugins
//	netns-prefix=PFX    container i's namespace is /var/run/netns/PFX<i>
//
// Each chain first runs one warm-up ADD and DEL on container PFX"w"; then
// for i = 1..N the ADD of container i on every chain in turn, then for i =
// 1..N the DELs in the same order, so all chains share the machine's drift.
// A chain whose call fails is reported on stderr and skipped from then on;
// cnidrive then exits 1 after the other chains are done.
//
// Each sample is the wall time of one AddNetworkList or DelNetworkList
// call (monotonic clock): libcni building each plugin's config, running
// the plugins, parsing the result and writing or removing its result
// cache entry under /var/lib/cni/results. Before each call cnidrive moves
// its one locked OS thread into the chain's host namespace (setns, not
// timed); the plugins are forked from that thread, so they start there.
// The container ID is the namespace's name; the interface is eth0. With
// -hostport BASE container i publishes host port BASE+i to its port 80
// through the portMappings capability (on ADD and DEL, as runtimes pass
// it; libcni gives it only to plugins declaring the capability).
//
// FILE gets one line per call, "label,op,seq,ns" (op add or del, seq 0 the
// warm-up), written at the end.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"golang.org/x/sys/unix"
)

// spec is one chain as given by -chain.
type spec struct {
	label, hostns, net, confdir, cniPath, netnsPrefix string
}

// parseSpec parses a -chain value.
func parseSpec(s string) (spec, error) {
	var sp spec
	fields := map[string]*string{
		"label": &sp.label, "hostns": &sp.hostns, "net": &sp.net,
		"confdir": &sp.confdir, "cni-path": &sp.cniPath, "netns-prefix": &sp.netnsPrefix,
	}
	seen := map[string]bool{}
	for kv := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		p := fields[k]
		switch {
		case !ok || p == nil:
			return spec{}, fmt.Errorf("chain %q: %q is not one of label=, hostns=, net=, confdir=, cni-path=, netns-prefix=", s, kv)
		case seen[k]:
			return spec{}, fmt.Errorf("chain %q: %s given twice", s, k)
		case v == "":
			return spec{}, fmt.Errorf("chain %q: %s is empty", s, k)
		}
		seen[k] = true
		*p = v
	}
	for k := range fields {
		if !seen[k] {
			return spec{}, fmt.Errorf("chain %q: no %s=", s, k)
		}
	}
	return sp, nil
}

// chain is a loaded spec.
type chain struct {
	spec
	hostFD int
	list   *libcni.NetworkConfigList
	cni    *libcni.CNIConfig
	err    error // the first failed call; nil while the chain runs
}

// sample is one timed call.
type sample struct {
	label, op string
	seq       int
	d         time.Duration
}

func main() {
	n := flag.Int("n", 0, "containers per chain")
	out := flag.String("o", "", "write the samples to this `file`")
	hostPort := flag.Int("hostport", 0, "container i publishes host port `BASE`+i (0: no port mappings)")
	var specs []spec
	flag.Func("chain", "a chain to drive: `label=,hostns=,net=,confdir=,cni-path=,netns-prefix=` (repeatable)", func(s string) error {
		sp, err := parseSpec(s)
		if err == nil {
			specs = append(specs, sp)
		}
		return err
	})
	flag.Parse()
	if *n < 1 || *out == "" || len(specs) == 0 || flag.NArg() > 0 || *hostPort < 0 || *hostPort+*n > 65535 {
		fmt.Fprintln(os.Stderr, "usage: cnidrive -n N -o FILE [-hostport BASE] -chain SPEC [-chain SPEC...]")
		flag.PrintDefaults()
		os.Exit(2)
	}

	// Every call, and so every plugin fork, happens on this thread; setns
	// changes only it. Never unlocked: it dies with the process.
	runtime.LockOSThread()

	chains, err := load(specs)
	if err != nil {
		fmt.Fprintln(os.Stderr, "cnidrive:", err)
		os.Exit(1)
	}
	samples := drive(chains, *n, *hostPort)
	if err := write(*out, samples); err != nil {
		fmt.Fprintln(os.Stderr, "cnidrive:", err)
		os.Exit(1)
	}
	for _, c := range chains {
		if c.err != nil {
			os.Exit(1)
		}
	}
}

// load opens each chain's host namespace and loads its conflist.
func load(specs []spec) ([]*chain, error) {
	var chains []*chain
	for _, sp := range specs {
		list, err := libcni.LoadConfList(sp.confdir, sp.net)
		if err != nil {
			return nil, fmt.Errorf("%s: load network %q from %s: %w", sp.label, sp.net, sp.confdir, err)
		}
		fd, err := unix.Open(sp.hostns, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("%s: open host netns %s: %w", sp.label, sp.hostns, err)
		}
		chains = append(chains, &chain{
			spec:   sp,
			hostFD: fd,
			list:   list,
			cni:    libcni.NewCNIConfig(filepath.SplitList(sp.cniPath), nil),
		})
	}
	return chains, nil
}

// drive runs the warm-ups, then the ADDs and the DELs interleaved across
// the chains, and returns the samples of the calls that succeeded.
func drive(chains []*chain, n, hostPort int) []sample {
	var samples []sample
	step := func(c *chain, op string, seq int, ctr string) {
		if c.err != nil {
			return
		}
		d, err := c.call(op, ctr, portArgs(hostPort, seq))
		if err != nil {
			c.err = err
			fmt.Fprintf(os.Stderr, "cnidrive: %s: %s %s (network %s): %v\n", c.label, op, ctr, c.net, err)
			return
		}
		samples = append(samples, sample{c.label, op, seq, d})
	}
	for _, c := range chains {
		step(c, "add", 0, c.netnsPrefix+"w")
		step(c, "del", 0, c.netnsPrefix+"w")
	}
	for _, op := range []string{"add", "del"} {
		for i := 1; i <= n; i++ {
			for _, c := range chains {
				step(c, op, i, fmt.Sprint(c.netnsPrefix, i))
			}
		}
	}
	return samples
}

// portArgs is the portMappings capability argument publishing host port
// base+seq, or nil for base 0.
func portArgs(base, seq int) map[string]any {
	if base == 0 {
		return nil
	}
	return map[string]any{"portMappings": []map[string]any{
		{"hostPort": base + seq, "containerPort": 80, "protocol": "tcp"},
	}}
}

// call moves the thread into the chain's host namespace, then times one
// AddNetworkList or DelNetworkList for container ctr (a netns name).
func (c *chain) call(op, ctr string, capArgs map[string]any) (time.Duration, error) {
	if err := unix.Setns(c.hostFD, unix.CLONE_NEWNET); err != nil {
		return 0, fmt.Errorf("setns %s: %w", c.hostns, err)
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    ctr,
		NetNS:          "/var/run/netns/" + ctr,
		IfName:         "eth0",
		CapabilityArgs: capArgs,
	}
	ctx := context.Background()
	var err error
	start := time.Now()
	switch op {
	case "add":
		_, err = c.cni.AddNetworkList(ctx, c.list, rt)
	case "del":
		err = c.cni.DelNetworkList(ctx, c.list, rt)
	default:
		err = fmt.Errorf("unknown op %q", op)
	}
	return time.Since(start), err
}

// write writes the samples to path as "label,op,seq,ns" lines.
func write(path string, samples []sample) error {
	var b strings.Builder
	for _, s := range samples {
		fmt.Fprintf(&b, "%s,%s,%d,%d\n", s.label, s.op, s.seq, s.d.Nanoseconds())
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("write samples: %w", err)
	}
	return nil
}
