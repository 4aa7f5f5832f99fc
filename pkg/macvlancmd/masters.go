package macvlancmd

// Per-master state: what berth shares between the containers on one
// master, kept in <dataDir>/_macvlan/<master>.json and changed only under
// the master's lock: who is on it (passthru holds it alone), whether berth
// turned promiscuous mode on and whether the master was promiscuous
// before, and which addresses the host shim routes. ("_macvlan" cannot be
// a network's directory: network names start with a letter or digit.)

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/state"
)

// masterState is the shared state of one master.
type masterState struct {
	Master string `json:"master"`
	// Index is the master's ifindex when its first user came: a master
	// re-created since (another index) took its macvlans with it.
	Index int `json:"index"`
	// WasPromisc: the master was already promiscuous when the first user
	// with promisc came, so berth never turns it off.
	WasPromisc bool         `json:"wasPromisc,omitempty"`
	Users      []masterUser `json:"users,omitempty"`
}

// masterUser is one attachment on the master.
type masterUser struct {
	Network     string `json:"network"`
	ContainerID string `json:"containerID"`
	IfName      string `json:"ifName"`
	Mode        string `json:"mode"`
	Promisc     bool   `json:"promisc,omitempty"`
	Shim        bool   `json:"shim,omitempty"`
	// MAC and IPs: what the host shim routes to this container.
	MAC string   `json:"mac,omitempty"`
	IPs []string `json:"ips,omitempty"`
}

func (u masterUser) owner() owner.Owner {
	return owner.Owner{Network: u.Network, ContainerID: u.ContainerID, IfName: u.IfName}
}

func (u masterUser) String() string {
	return fmt.Sprintf("container %s (network %s, %s)", u.ContainerID, u.Network, u.IfName)
}

// admit checks that u may join the master: a passthru macvlan holds its
// master alone (the kernel refuses anything else with a bare EINVAL; berth
// names the holder).
func (s *masterState) admit(u masterUser) error {
	for _, o := range s.Users {
		if o.owner() == u.owner() {
			continue
		}
		if o.Mode == config.ModePassthru {
			return hostState("master %q is held by %s in mode passthru, which allows one macvlan on a master", s.Master, o)
		}
		if u.Mode == config.ModePassthru {
			return hostState("mode passthru needs master %q to itself, and %s is on it", s.Master, o)
		}
	}
	return nil
}

// put adds u, replacing an entry of the same owner (a repeated ADD).
func (s *masterState) put(u masterUser) {
	s.remove(u.owner())
	s.Users = append(s.Users, u)
}

// remove takes the owner's entry out.
func (s *masterState) remove(o owner.Owner) (masterUser, bool) {
	for i, u := range s.Users {
		if u.owner() == o {
			s.Users = slices.Delete(s.Users, i, i+1)
			return u, true
		}
	}
	return masterUser{}, false
}

func (s *masterState) find(o owner.Owner) *masterUser {
	for i := range s.Users {
		if s.Users[i].owner() == o {
			return &s.Users[i]
		}
	}
	return nil
}

func (s *masterState) anyPromisc() bool {
	return slices.ContainsFunc(s.Users, func(u masterUser) bool { return u.Promisc })
}

func (s *masterState) anyShim() bool {
	return slices.ContainsFunc(s.Users, func(u masterUser) bool { return u.Shim })
}

// unroutable returns those of u's shim addresses that no remaining user's
// shim routes: a re-created container may hold the same address already.
func (s *masterState) unroutable(u masterUser) []netip.Addr {
	held := map[string]bool{}
	for _, o := range s.Users {
		if o.Shim {
			for _, ip := range o.IPs {
				held[ip] = true
			}
		}
	}
	var out []netip.Addr
	for _, ip := range u.IPs {
		if a, err := netip.ParseAddr(ip); err == nil && !held[ip] {
			out = append(out, a)
		}
	}
	return out
}

// masters is the per-master state under one dataDir, and the host
// namespace the masters are in.
type masters struct {
	dir  string
	host *netns.NS
}

func openMasters(dataDir string, host *netns.NS) masters {
	return masters{dir: filepath.Join(dataDir, "_macvlan"), host: host}
}

// path: master names are link names (validated: no '/', not "." or "..").
func (m masters) path(master string) string { return filepath.Join(m.dir, master+".json") }

// lock takes the master's lock. It is global (/run/berth/lock), not per
// dataDir: two dataDirs on one master share the kernel state too.
func (m masters) lock(master string) (*lock.Lock, error) {
	return lock.Acquire("macvlan-"+master, lock.Wait)
}

// locked runs fn with the master's state, under the master's lock. fn
// saves what it changes.
func (m masters) locked(master string, fn func(s *masterState) error) error {
	l, err := m.lock(master)
	if err != nil {
		return err
	}
	defer l.Unlock()
	s, err := m.load(master)
	if err != nil {
		return err
	}
	return fn(&s)
}

// load reads the master's state; none yet is an empty state.
func (m masters) load(master string) (masterState, error) {
	s := masterState{Master: master}
	b, err := os.ReadFile(m.path(master))
	if errors.Is(err, fs.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read macvlan master state: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return s, fmt.Errorf("decode macvlan master state %s: %w", m.path(master), err)
	}
	return s, nil
}

// save writes the state, or removes its file when no one is on the master.
func (m masters) save(s masterState) error {
	if len(s.Users) == 0 {
		if err := os.Remove(m.path(s.Master)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove macvlan master state: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	return state.WriteAtomic(m.path(s.Master), b)
}

// all reads every master's state (unlocked: for finding, not changing).
func (m masters) all() ([]masterState, error) {
	ents, err := os.ReadDir(m.dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list macvlan master state: %w", err)
	}
	var out []masterState
	var errs []error
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() || strings.HasPrefix(name, ".tmp-") {
			continue
		}
		s, err := m.load(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, s)
	}
	return out, errors.Join(errs...)
}

// claim records u on master m before its macvlan is created, and turns
// promiscuous mode on when u asks for it. The state is saved before the
// kernel changes, so a crash leaves a record that DEL and GC undo.
//
// Equivalent: flock …; ip link set $master promisc on
func (m masters) claim(master link.Master, u masterUser) error {
	return m.locked(master.Name, func(s *masterState) error {
		if s.Index != master.Index {
			// New, or the master was re-created: the old one's macvlans
			// and promiscuous mode went with it.
			*s = masterState{Master: master.Name, Index: master.Index}
		}
		if err := s.admit(u); err != nil {
			return err
		}
		if u.Promisc && !s.anyPromisc() {
			s.WasPromisc = master.Promisc
		}
		s.put(u)
		if err := m.save(*s); err != nil {
			return err
		}
		if u.Promisc && !master.Promisc {
			return link.SetPromisc(m.host, master.Name, true)
		}
		return nil
	})
}

// routeShim records the container's MAC and addresses as shim-routed, then
// ensures the master's host shim and routes them through it.
//
// Equivalent: flock …; ip link add $shim link $master type macvlan mode bridge; ip route replace …
func (m masters) routeShim(master link.Master, o owner.Owner, mac net.HardwareAddr, addrs []netip.Addr) error {
	return m.locked(master.Name, func(s *masterState) error {
		u := s.find(o)
		if u == nil {
			return fmt.Errorf("macvlan master %q has no record of %s/%s", master.Name, o.ContainerID, o.IfName)
		}
		u.Shim, u.MAC, u.IPs = true, mac.String(), nil
		for _, a := range addrs {
			u.IPs = append(u.IPs, a.String())
		}
		if err := m.save(*s); err != nil {
			return err
		}
		if _, err := link.EnsureShim(m.host, master); err != nil {
			return err
		}
		return link.AddShimPeer(m.host, master, link.ShimPeer{MAC: mac, Addrs: addrs})
	})
}

// release takes the owner off whichever master it is on: its shim routes
// go (and the shim with the last shim user), and promiscuous mode is
// turned off with the last promisc user unless the master had it before.
// An owner on no master is nothing to do. The state is saved after the
// kernel changes, so a failed release is found again by a retried DEL.
//
// Equivalent: flock …; ip route del …; ip link del $shim; ip link set $master promisc off
func (m masters) release(o owner.Owner) error {
	all, err := m.all()
	var errs []error
	for _, s := range all {
		if s.find(o) != nil {
			errs = append(errs, m.releaseFrom(s.Master, o))
		}
	}
	return errors.Join(append(errs, err)...)
}

func (m masters) releaseFrom(master string, o owner.Owner) error {
	return m.locked(master, func(s *masterState) error {
		u, ok := s.remove(o)
		if !ok {
			return nil
		}
		cur, err := link.FindMaster(m.host, master)
		if err != nil && !errors.Is(err, link.ErrNoSuchLink) {
			return err
		}
		// A missing or re-created master took the shim and promiscuous
		// mode with it: only the state is left to change.
		if present := err == nil && cur.Index == s.Index; present {
			var errs []error
			if u.Shim {
				errs = append(errs, link.DeleteShimPeer(m.host, master, s.unroutable(u)))
				if !s.anyShim() {
					errs = append(errs, link.DeleteShim(m.host, master))
				}
			}
			if u.Promisc && !s.anyPromisc() && !s.WasPromisc {
				errs = append(errs, link.SetPromisc(m.host, master, false))
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
		}
		if !s.anyPromisc() {
			s.WasPromisc = false
		}
		return m.save(*s)
	})
}

// usersOf lists the attachments of network on any master.
func (m masters) usersOf(network string) ([]owner.Owner, error) {
	all, err := m.all()
	var out []owner.Owner
	for _, s := range all {
		for _, u := range s.Users {
			if u.Network == network {
				out = append(out, u.owner())
			}
		}
	}
	return out, err
}

// lookup returns the master the owner is on and its entry there, if any.
func (m masters) lookup(o owner.Owner) (string, masterUser, bool, error) {
	all, err := m.all()
	for _, s := range all {
		if u := s.find(o); u != nil {
			return s.Master, *u, true, nil
		}
	}
	return "", masterUser{}, false, err
}

func hostState(format string, args ...any) error {
	return cnierr.WithCode(cnierr.CodeHostState, fmt.Errorf(format, args...))
}
