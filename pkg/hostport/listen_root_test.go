package hostport

import (
	"net"
	"testing"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// CheckBound refuses exactly the keys a socket of the namespace overlaps.
func TestCheckBound(t *testing.T) {
	l, n := testNS(t)
	var closers []func() error
	err := l.Do(func() error {
		for _, l := range []struct{ netw, addr string }{
			{"tcp4", "0.0.0.0:7001"}, {"tcp", "[::]:7002"}, {"tcp4", "127.0.0.1:7003"}, {"udp4", "0.0.0.0:7004"}, {"tcp6", "[::1]:7005"},
		} {
			if l.netw[:3] == "udp" {
				c, err := net.ListenPacket(l.netw, l.addr)
				if err != nil {
					return err
				}
				closers = append(closers, c.Close)
				continue
			}
			ln, err := net.Listen(l.netw, l.addr)
			if err != nil {
				return err
			}
			closers = append(closers, ln.Close)
		}
		return nil
	})
	defer func() {
		for _, c := range closers {
			c()
		}
	}()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		m       Mapping
		refused bool
	}{
		{mapping("tcp", "", 7001, 80), true},
		{mapping("tcp", "10.0.0.1", 7001, 80), true},
		{mapping("tcp", "::", 7001, 80), false},     // v4-only listener
		{mapping("tcp", "0.0.0.0", 7002, 80), true}, // dual-stack listener
		{mapping("tcp", "10.0.0.1", 7003, 80), false},
		{mapping("tcp", "127.0.0.1", 7003, 80), true},
		{mapping("tcp", "", 7003, 80), true},
		{mapping("udp", "", 7004, 80), true},
		{mapping("tcp", "", 7004, 80), false}, // udp socket, tcp key
		{mapping("tcp", "fd00::1", 7005, 80), false},
		{mapping("tcp", "::", 7005, 80), true},
		{mapping("tcp", "", 7006, 80), false},
	} {
		err := CheckBound(n, []Mapping{tc.m})
		if got := err != nil; got != tc.refused {
			t.Errorf("%v: refused %v (%v), want %v", tc.m.Key, got, err, tc.refused)
		}
		if err != nil && cnierr.Code(err) != cnierr.CodePortInUse {
			t.Errorf("%v: code %d, want 102: %v", tc.m.Key, cnierr.Code(err), err)
		}
	}
}
