package lab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
)

// The uplink between a world's host and its outside namespace, from the
// documentation ranges (RFC 5737, RFC 3849): nothing on a real network.
var (
	HostUplink4    = netip.MustParsePrefix("203.0.113.1/24")
	OutsideUplink4 = netip.MustParsePrefix("203.0.113.2/24")
	HostUplink6    = netip.MustParsePrefix("2001:db8:1::1/64")
	OutsideUplink6 = netip.MustParsePrefix("2001:db8:1::2/64")
)

// Uplink link names: "up0" in the host, "wan0" in the outside.
const (
	HostUplinkName    = "up0"
	OutsideUplinkName = "wan0"
)

// World is one lab: a "host" namespace where the plugins run, an "outside"
// namespace standing in for the internet (joined to the host by a veth, the
// host's default routes point at it, and it has no route back to any
// container subnet), and container namespaces added on demand. Every name
// is "<prefix>-<pid>-<id>-<role>": the creating process's PID lets
// SweepStale remove what a killed run left behind.
type World struct {
	Prefix  string
	ID      string
	Host    *NS
	Outside *NS

	mu         sync.Mutex
	containers []*NS
}

// NewWorld creates the host and outside namespaces and the uplink between
// them. On error it removes what it created.
func NewWorld(ctx context.Context, prefix string) (w *World, err error) {
	w = &World{Prefix: prefix, ID: RandomSuffix(6)}
	defer func() {
		if err != nil {
			err = errors.Join(err, w.Close())
			w = nil
		}
	}()
	if w.Host, err = NewNS(ctx, w.name("host")); err != nil {
		return w, err
	}
	if w.Outside, err = NewNS(ctx, w.name("out")); err != nil {
		return w, err
	}
	err = Veth(
		VethEnd{NS: w.Host, Name: HostUplinkName, Addrs: []netip.Prefix{HostUplink4, HostUplink6}},
		VethEnd{NS: w.Outside, Name: OutsideUplinkName, Addrs: []netip.Prefix{OutsideUplink4, OutsideUplink6}},
	)
	if err != nil {
		return w, err
	}
	if err = w.Host.AddDefaultRoute(OutsideUplink4.Addr()); err != nil {
		return w, err
	}
	if err = w.Host.AddDefaultRoute(OutsideUplink6.Addr()); err != nil {
		return w, err
	}
	return w, nil
}

func (w *World) name(role string) string { return w.NamePrefix() + role }

// NamePrefix is what every namespace name of this world starts with.
func (w *World) NamePrefix() string {
	return fmt.Sprintf("%s-%d-%s-", w.Prefix, os.Getpid(), w.ID)
}

// Leftovers lists the namespaces of this world that still exist (none after
// Close).
func (w *World) Leftovers() ([]string, error) { return ListNetns(w.NamePrefix()) }

// SweepStale deletes the namespaces "<prefix>-<pid>-…" whose creating
// process no longer exists (a run killed before its cleanup) and returns
// their names. Namespaces of live processes are left alone.
//
// Equivalent: ip netns del $name, for each stale name
func SweepStale(prefix string) ([]string, error) {
	names, err := ListNetns(prefix + "-")
	if err != nil {
		return nil, err
	}
	var swept []string
	var errs []error
	for _, name := range names {
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(name, prefix+"-"), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 {
			continue // not named by this package
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue // its process still runs
		}
		n := &NS{Name: name, Path: filepath.Join(NetnsDir, name)}
		if err := n.Delete(); err != nil {
			errs = append(errs, err)
			continue
		}
		swept = append(swept, name)
	}
	return swept, errors.Join(errs...)
}

// AddContainer creates a container namespace "<prefix>-<id>-<name>".
func (w *World) AddContainer(ctx context.Context, name string) (*NS, error) {
	ns, err := NewNS(ctx, w.name(name))
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	w.containers = append(w.containers, ns)
	w.mu.Unlock()
	return ns, nil
}

// Close deletes the containers, the outside and the host namespace (and so
// every link, route and rule in them), killing processes started in them.
// It is safe to call more than once.
func (w *World) Close() error {
	w.mu.Lock()
	cs := w.containers
	w.containers = nil
	w.mu.Unlock()
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Delete())
	}
	for _, n := range []*NS{w.Outside, w.Host} {
		if n != nil {
			errs = append(errs, n.Delete())
		}
	}
	return errors.Join(errs...)
}
