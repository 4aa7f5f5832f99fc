package hostport

import (
	"testing"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/iptables"
)

// A bad iptables option in the config is reported by Add and Check, and
// the datapath is still made, so that Remove works whatever the config
// says.
func TestIPTablesBadConfig(t *testing.T) {
	t.Parallel()
	a := iptAttachment("c1", mapping("tcp", "", 8080, 80))
	for _, bad := range [][]string{{"-s", ""}, {"-s", "10.0.0.0/8\n-A PREROUTING -j ACCEPT"}, {"a\tb"}, {"\x00"}} {
		d := NewIPTables(nil, &config.Portmap{ConditionsV4: &bad}, iptables.Commands{})
		if d.Add(a) == nil || d.Check(a) == nil {
			t.Errorf("conditions %q: Add or Check did not report the bad config", bad)
		}
	}
}
