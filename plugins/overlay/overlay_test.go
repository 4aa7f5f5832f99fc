package main

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/overlay"
)

var local = overlay.Local{
	Network: "ov",
	CIDR:    netip.MustParsePrefix("10.244.0.0/16"),
	Subnet:  netip.MustParsePrefix("10.244.3.0/24"),
	Gateway: netip.MustParseAddr("10.244.3.1"),
	MTU:     1450,
	Ready:   true,
}

func derive(t *testing.T, stdin string, l overlay.Local) (*config.Bridge, map[string]any) {
	t.Helper()
	conf, err := config.ParseOverlay([]byte(stdin))
	if err != nil {
		t.Fatalf("ParseOverlay: %v", err)
	}
	b, err := bridgeStdin([]byte(stdin), conf, l)
	if err != nil {
		t.Fatalf("bridgeStdin: %v", err)
	}
	bc, err := config.ParseBridge(b, "")
	if err != nil {
		t.Fatalf("derived config %s does not parse: %v", b, err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return bc, m
}

func TestBridgeStdinDefaults(t *testing.T) {
	bc, m := derive(t, `{"cniVersion":"1.1.0","name":"ov","type":"overlay",
		"runtimeConfig":{"mac":"02:00:00:00:00:01"}}`, local)
	if bc.BrName != bridgeName("ov") || !strings.HasPrefix(bc.BrName, BridgePrefix) || len(bc.BrName) != 13 {
		t.Errorf("bridge = %q, want %q", bc.BrName, bridgeName("ov"))
	}
	if !bc.IsGW || !bc.IsDefaultGW || !bc.IPMasq || !bc.HairpinMode {
		t.Errorf("gateway/default/masq/hairpin = %v/%v/%v/%v, want all true", bc.IsGW, bc.IsDefaultGW, bc.IPMasq, bc.HairpinMode)
	}
	if bc.MTU != 1450 {
		t.Errorf("mtu = %d, want the agent's 1450", bc.MTU)
	}
	if bc.MAC.String() != "02:00:00:00:00:01" {
		t.Errorf("runtimeConfig.mac lost: %v", bc.MAC)
	}
	if bc.DataDir != config.DefaultDataDir {
		t.Errorf("dataDir = %q", bc.DataDir)
	}
	ipam := m["ipam"].(map[string]any)
	want := `{"dataDir":"/var/lib/berth/overlay-ipam","ranges":[[{"gateway":"10.244.3.1","subnet":"10.244.3.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"}`
	if got, _ := json.Marshal(ipam); string(got) != want {
		t.Errorf("ipam = %s\nwant   %s", got, want)
	}
	if _, ok := m["overlayNetwork"]; ok {
		t.Error("overlay-only key passed to the bridge code")
	}
}

func TestBridgeStdinUserKeys(t *testing.T) {
	bc, _ := derive(t, `{"cniVersion":"1.1.0","name":"ov","type":"overlay","overlayNetwork":"cluster",
		"bridge":"ov0","ipMasq":false,"mtu":1400,"hairpinMode":false,"macspoofchk":true,"dataDir":"/tmp/d"}`, local)
	if bc.BrName != "ov0" || bc.IPMasq || bc.MTU != 1400 || bc.HairpinMode || !bc.MacSpoofChk || bc.DataDir != "/tmp/d" {
		t.Errorf("user keys not kept: %+v", bc)
	}
	if bc.IPAMConf.Type != "host-local" {
		t.Errorf("ipam type = %q", bc.IPAMConf.Type)
	}
}

// With no agent state (DEL after the agent never ran) the derived config
// has no IPAM and no MTU, and still parses.
func TestBridgeStdinNoAgent(t *testing.T) {
	bc, m := derive(t, `{"cniVersion":"1.1.0","name":"ov","type":"overlay"}`, overlay.Local{})
	if _, ok := m["ipam"]; ok || bc.IPAMConf.Type != "" || bc.MTU != 0 {
		t.Errorf("no agent state, yet ipam %v, mtu %d", m["ipam"], bc.MTU)
	}
}

func TestBridgeStdinErrors(t *testing.T) {
	for _, tc := range []struct {
		name, stdin, field string
	}{
		{"mtu above agent", `{"cniVersion":"1.1.0","name":"ov","type":"overlay","mtu":1500}`, "mtu"},
		{"ipam", `{"cniVersion":"1.1.0","name":"ov","type":"overlay","ipam":{"type":"dhcp"}}`, "ipam"},
		{"isGateway false", `{"cniVersion":"1.1.0","name":"ov","type":"overlay","isGateway":false}`, "isGateway"},
		{"isDefaultGateway false", `{"cniVersion":"1.1.0","name":"ov","type":"overlay","isDefaultGateway":false}`, "isDefaultGateway"},
		{"overlayNetwork", `{"cniVersion":"1.1.0","name":"ov","type":"overlay","overlayNetwork":"../x"}`, "overlayNetwork"},
		{"stateDir", `{"cniVersion":"1.1.0","name":"ov","type":"overlay","stateDir":"run"}`, "stateDir"},
		{"bad bridge key", `{"cniVersion":"1.1.0","name":"ov","type":"overlay","bridge":"a/b"}`, "bridge"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conf, err := config.ParseOverlay([]byte(tc.stdin))
			if err == nil {
				var b []byte
				if b, err = bridgeStdin([]byte(tc.stdin), conf, local); err == nil {
					_, err = config.ParseBridge(b, "")
				}
			}
			if cnierr.Code(err) != 7 || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err = %v (code %d), want code 7 naming %s", err, cnierr.Code(err), tc.field)
			}
		})
	}
}

func FuzzBridgeStdin(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"ov","type":"overlay","mtu":1400,"bridge":"x"}`))
	f.Add([]byte(`{"name":"ov","overlayNetwork":"o","stateDir":"/s","ipam":null}`))
	f.Fuzz(func(t *testing.T, stdin []byte) {
		conf, err := config.ParseOverlay(stdin)
		if err != nil {
			return
		}
		b, err := bridgeStdin(stdin, conf, local)
		if err != nil {
			return
		}
		if bc, err := config.ParseBridge(b, ""); err == nil && (!bc.IsGW || bc.IPAMConf.Type != "host-local") {
			t.Fatalf("derived config lost the overlay's keys: %s", b)
		}
	})
}
