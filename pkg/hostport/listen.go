package hostport

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// Socket is a host socket bound to a port: a TCP or SCTP listener, or a
// bound UDP socket.
type Socket struct {
	Proto string
	Addr  netip.Addr // as bound; :: may accept IPv4 too
	Port  uint16
}

func (s Socket) String() string {
	return fmt.Sprintf("%s %s", s.Proto, netip.AddrPortFrom(s.Addr, s.Port))
}

// BoundError is a claim refused because a host process has the port
// (code 102).
type BoundError struct {
	Want   Key
	Socket Socket
}

func (e *BoundError) Error() string {
	return fmt.Sprintf("host port %s is already bound on the host by a process (a %s socket on %s); stop it or publish another port",
		e.Want, e.Socket.Proto, netip.AddrPortFrom(e.Socket.Addr, e.Socket.Port))
}

// socketOverlaps says whether traffic for k could reach s instead. A socket
// on :: is taken to accept IPv4 too (the Linux default, bindv6only=0).
func socketOverlaps(k Key, s Socket) bool {
	if k.Proto != s.Proto || k.Port != s.Port {
		return false
	}
	if !k.Addr.IsValid() {
		return true
	}
	if s.Addr.Is6() && s.Addr.IsUnspecified() {
		return true
	}
	return addrsOverlap(k.Addr, s.Addr)
}

// procNet is where the calling thread's network namespace's socket tables
// are (thread-self: a plugin's threads may differ in namespace).
var procNet = "/proc/thread-self/net"

// CheckBound returns a *BoundError (code 102) for the first mapping whose
// host port a socket of this network namespace holds. It reads the kernel's
// socket tables for the protocols the mappings use.
//
// Equivalent: ss -Hltnu 'sport = :8080'
func CheckBound(ms []Mapping) error {
	protos := map[string]bool{}
	for _, m := range ms {
		protos[m.Proto] = true
	}
	for proto := range protos {
		socks, err := BoundSockets(proto)
		if err != nil {
			return err
		}
		for _, m := range ms {
			for _, s := range socks {
				if socketOverlaps(m.Key, s) {
					return cnierr.WithCode(cnierr.CodePortInUse, &BoundError{Want: m.Key, Socket: s})
				}
			}
		}
	}
	return nil
}

// BoundSockets lists the sockets of proto that hold a port: TCP and SCTP
// listeners, UDP sockets bound to a port.
func BoundSockets(proto string) ([]Socket, error) {
	switch proto {
	case "tcp", "udp":
		var out []Socket
		for _, file := range []string{proto, proto + "6"} {
			f, err := os.Open(procNet + "/" + file)
			if errors.Is(err, fs.ErrNotExist) {
				continue // no IPv6 in this kernel
			}
			if err != nil {
				return nil, fmt.Errorf("portmap: read host sockets: %w", err)
			}
			socks, err := parseProcNet(f, proto)
			f.Close()
			if err != nil {
				return nil, fmt.Errorf("portmap: read %s/%s: %w", procNet, file, err)
			}
			out = append(out, socks...)
		}
		return out, nil
	case "sctp":
		f, err := os.Open(procNet + "/sctp/eps")
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil // no SCTP module loaded: no SCTP socket can exist
		}
		if err != nil {
			return nil, fmt.Errorf("portmap: read host sockets: %w", err)
		}
		defer f.Close()
		return parseSCTPEps(f)
	}
	return nil, fmt.Errorf("portmap: unknown protocol %q", proto)
}

// TCP state LISTEN and UDP state CLOSE (unconnected) in /proc/net/*.
const (
	tcpListen = "0A"
	udpClose  = "07"
)

// parseProcNet reads /proc/net/{tcp,tcp6,udp,udp6}: the TCP listeners and
// the unconnected UDP sockets (a server's). A connected socket's traffic is
// an established flow that DNAT of new flows does not touch.
func parseProcNet(r io.Reader, proto string) ([]Socket, error) {
	var out []Socket
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 4 {
			continue
		}
		if (proto == "tcp" && f[3] != tcpListen) || (proto == "udp" && f[3] != udpClose) {
			continue
		}
		addr, port, err := parseHexAddrPort(f[1])
		if err != nil {
			return nil, err
		}
		if port == 0 {
			continue
		}
		out = append(out, Socket{Proto: proto, Addr: addr, Port: port})
	}
	return out, sc.Err()
}

// parseHexAddrPort decodes "0100007F:1F90" (IPv4) or the 32-digit IPv6
// form: the address is 32-bit words in host byte order, the port big
// endian hex.
func parseHexAddrPort(s string) (netip.Addr, uint16, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("bad port in %q", s)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, fmt.Errorf("bad address %q", s)
	}
	// Each 32-bit word was printed as a host-endian integer: turn the
	// words back into memory order.
	for i := 0; i < len(raw); i += 4 {
		w := binary.BigEndian.Uint32(raw[i:])
		binary.NativeEndian.PutUint32(raw[i:], w)
	}
	addr, _ := netip.AddrFromSlice(raw)
	return addr.Unmap(), uint16(port), nil
}

// parseSCTPEps reads /proc/net/sctp/eps: columns ENDPT SOCK STY SST HBKT
// LPORT UID INODE LADDRS..., one listening endpoint per line.
func parseSCTPEps(r io.Reader) ([]Socket, error) {
	var out []Socket
	sc := bufio.NewScanner(r)
	first := true
	for sc.Scan() {
		if first {
			first = false
			continue
		}
		f := strings.Fields(sc.Text())
		if len(f) < 9 {
			continue
		}
		port, err := strconv.ParseUint(f[5], 10, 16)
		if err != nil || port == 0 {
			continue
		}
		for _, a := range f[8:] {
			addr, err := netip.ParseAddr(strings.TrimPrefix(a, "*"))
			if err != nil {
				continue
			}
			out = append(out, Socket{Proto: "sctp", Addr: addr.Unmap(), Port: uint16(port)})
		}
	}
	return out, sc.Err()
}
