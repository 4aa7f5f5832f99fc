package hostport

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/netns"
)

// BoundError is a claim refused because a socket on the host already has
// the port (code 102).
type BoundError struct {
	Want Key
	Addr netip.AddrPort // the address whose bind failed
}

func (e *BoundError) Error() string {
	return fmt.Sprintf("host port %s is already bound on the host by a process (or a host-network container): binding %s %s fails with \"address in use\"; stop it or publish another port (ss -lnp 'sport = :%d' shows who)",
		e.Want, e.Want.Proto, e.Addr, e.Want.Port)
}

// CheckBound returns a *BoundError (code 102) for the first mapping whose
// host port a socket of n holds.
//
// It asks the kernel: for each family the key covers it binds a throwaway
// socket in n to the key's address and port and closes it at once. TCP
// probes set SO_REUSEADDR, so they collide with listeners and with sockets
// bound without it, not with connections lingering in TIME_WAIT; UDP
// probes collide with any socket bound to the port. IP_FREEBIND lets a
// probe bind a host address that is not (yet) local. This costs the same
// however many sockets the host has, where reading /proc/net/tcp walks the
// kernel's whole connection table (milliseconds on a large machine). All
// probes run on one thread switched into n once.
//
// Equivalent: ip netns exec $n ss -Hln 'sport = :8080' (non-empty means refuse)
func CheckBound(n *netns.NS, ms []Mapping) error {
	if len(ms) == 0 {
		return nil
	}
	return n.Do(func() error {
		for _, m := range ms {
			if m.Proto == "sctp" && !sctpLoaded() {
				continue // no SCTP socket can exist; don't load the module
			}
			if err := checkBound(m); err != nil {
				return err
			}
		}
		return nil
	})
}

// checkBound probes m's families from the calling thread's namespace.
func checkBound(m Mapping) error {
	v4, v6 := m.Families()
	for _, fam := range []struct {
		on   bool
		any  netip.Addr
		isV6 bool
	}{{v4, netip.IPv4Unspecified(), false}, {v6, netip.IPv6Unspecified(), true}} {
		if !fam.on {
			continue
		}
		addr := fam.any
		if m.Addr.IsValid() && !m.Addr.IsUnspecified() {
			addr = m.Addr
		}
		err := probe(m.Proto, netip.AddrPortFrom(addr, m.Port))
		if errors.Is(err, unix.EADDRINUSE) {
			return cnierr.WithCode(cnierr.CodePortInUse, &BoundError{Want: m.Key, Addr: netip.AddrPortFrom(addr, m.Port)})
		}
		if errors.Is(err, unix.EAFNOSUPPORT) && fam.isV6 {
			continue // no IPv6 here: nothing can listen on it
		}
		if err != nil {
			return fmt.Errorf("portmap: check whether %s %s is bound on the host: %w", m.Proto, netip.AddrPortFrom(addr, m.Port), err)
		}
	}
	return nil
}

// sctpLoaded reports whether the calling thread's namespace knows SCTP
// (its /proc/net/sctp exists once the module is loaded).
func sctpLoaded() bool {
	_, err := os.Stat("/proc/thread-self/net/sctp")
	return err == nil
}

// probe binds a socket of proto to ap, in the calling thread's namespace,
// and closes it.
func probe(proto string, ap netip.AddrPort) error {
	domain := unix.AF_INET
	if ap.Addr().Is6() {
		domain = unix.AF_INET6
	}
	typ, p := unix.SOCK_STREAM, 0
	switch proto {
	case "udp":
		typ = unix.SOCK_DGRAM
	case "sctp":
		p = unix.IPPROTO_SCTP
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, p)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if typ == unix.SOCK_STREAM {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return err
		}
	}
	var sa unix.Sockaddr
	if domain == unix.AF_INET6 {
		// Only IPv6: a v6 key must not be refused for a v4-only socket.
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return err
		}
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_FREEBIND, 1); err != nil {
			return err
		}
		sa = &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}
	} else {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_FREEBIND, 1); err != nil {
			return err
		}
		sa = &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().As4()}
	}
	return unix.Bind(fd, sa)
}
