package config

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/cnierr"
)

var local = OverlayHost{
	CIDR:    netip.MustParsePrefix("10.244.0.0/16"),
	Subnet:  netip.MustParsePrefix("10.244.3.0/24"),
	Gateway: netip.MustParseAddr("10.244.3.1"),
	MTU:     1450,
}

// derive parses stdin and completes it for host h: the bridge config and
// the IPAM plugin's network config, decoded.
func derive(t *testing.T, stdin string, h OverlayHost) (*Bridge, map[string]any) {
	t.Helper()
	conf, err := ParseOverlay([]byte(stdin), "")
	if err != nil {
		t.Fatalf("ParseOverlay: %v", err)
	}
	bc, ipamConf, err := conf.OnHost(h)
	if err != nil {
		t.Fatalf("OnHost: %v", err)
	}
	m := map[string]any{}
	if ipamConf != nil {
		if err := json.Unmarshal(ipamConf, &m); err != nil {
			t.Fatal(err)
		}
		// The IPAM plugin's config parses as the bridge plugin's would.
		if _, err := decodeIPAM(mustRaw(t, m["ipam"])); err != nil {
			t.Fatalf("ipam config %s: %v", ipamConf, err)
		}
	}
	return bc, m
}

func mustRaw(t *testing.T, v any) json.RawMessage {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOverlayDefaults(t *testing.T) {
	bc, m := derive(t, `{"cniVersion":"1.1.0","name":"ov","type":"overlay",
		"runtimeConfig":{"mac":"02:00:00:00:00:01"}}`, local)
	if bc.BrName != OverlayBridgeName("ov") || !strings.HasPrefix(bc.BrName, OverlayBridgePrefix) || len(bc.BrName) != 13 {
		t.Errorf("bridge = %q, want %q", bc.BrName, OverlayBridgeName("ov"))
	}
	// The name is an API: it must never change.
	if got := OverlayBridgeName("ov"); got != "bov"+got[3:] || len(got) != 13 {
		t.Errorf("OverlayBridgeName(ov) = %q", got)
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
	if bc.DataDir != DefaultDataDir {
		t.Errorf("dataDir = %q", bc.DataDir)
	}
	ipam := m["ipam"].(map[string]any)
	want := `{"dataDir":"/var/lib/berth/overlay-ipam","ranges":[[{"gateway":"10.244.3.1","subnet":"10.244.3.0/24"}]],"routes":[{"dst":"10.244.0.0/16"}],"type":"host-local"}`
	if got, _ := json.Marshal(ipam); string(got) != want {
		t.Errorf("ipam = %s\nwant   %s", got, want)
	}
	if _, ok := m["overlayNetwork"]; ok {
		t.Error("overlay-only key passed to the IPAM plugin")
	}
	if got, _ := json.Marshal(m["runtimeConfig"]); string(got) != `{"mac":"02:00:00:00:00:01"}` {
		t.Errorf("runtimeConfig passed to the IPAM plugin = %s", got)
	}
	if m["name"] != "ov" || m["cniVersion"] != "1.1.0" {
		t.Errorf("IPAM config names %v %v", m["name"], m["cniVersion"])
	}
}

func TestOverlayUserKeys(t *testing.T) {
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
func TestOverlayNoAgent(t *testing.T) {
	bc, m := derive(t, `{"cniVersion":"1.1.0","name":"ov","type":"overlay"}`, OverlayHost{})
	if _, ok := m["ipam"]; ok || bc.IPAMConf.Type != "" || bc.MTU != 0 {
		t.Errorf("no agent state, yet ipam %v, mtu %d", m["ipam"], bc.MTU)
	}
}

func TestOverlayErrors(t *testing.T) {
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
			conf, err := ParseOverlay([]byte(tc.stdin), "")
			if err == nil {
				_, _, err = conf.OnHost(local)
			}
			if cnierr.Code(err) != 7 || !strings.Contains(err.Error(), tc.field) {
				t.Fatalf("err = %v (code %d), want code 7 naming %s", err, cnierr.Code(err), tc.field)
			}
		})
	}
}

// The overlay's defaults are checked with the user's keys as the bridge
// plugin checks them: hairpin (on by default) with promiscMode is refused.
func TestOverlayDefaultsValidated(t *testing.T) {
	_, err := ParseOverlay([]byte(`{"cniVersion":"1.1.0","name":"ov","type":"overlay","promiscMode":true}`), "")
	if cnierr.Code(err) != 7 || !strings.Contains(err.Error(), "hairpinMode") {
		t.Fatalf("err = %v, want code 7 naming hairpinMode", err)
	}
	if _, err := ParseOverlay([]byte(`{"cniVersion":"1.1.0","name":"ov","type":"overlay","promiscMode":true,"hairpinMode":false}`), ""); err != nil {
		t.Fatal(err)
	}
}

func FuzzOverlay(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"ov","type":"overlay","mtu":1400,"bridge":"x"}`))
	f.Add([]byte(`{"name":"ov","overlayNetwork":"o","stateDir":"/s","ipam":null}`))
	f.Fuzz(func(t *testing.T, stdin []byte) {
		conf, err := ParseOverlay(stdin, "")
		if err != nil {
			return
		}
		bc, ipamConf, err := conf.OnHost(local)
		if err != nil {
			return
		}
		if !bc.IsGW || !bc.IsDefaultGW || bc.IPAMConf.Type != "host-local" {
			t.Fatalf("derived config lost the overlay's keys: %+v", bc)
		}
		var m struct {
			IPAM json.RawMessage `json:"ipam"`
		}
		if err := json.Unmarshal(ipamConf, &m); err != nil {
			t.Fatalf("IPAM config %s: %v", ipamConf, err)
		}
		if _, err := decodeIPAM(m.IPAM); err != nil {
			t.Fatalf("IPAM config %s: %v", ipamConf, err)
		}
	})
}
