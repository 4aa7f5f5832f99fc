package config

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
)

func TestParseBridgeDefaults(t *testing.T) {
	t.Parallel()
	c, err := ParseBridge([]byte(`{"cniVersion":"1.1.0","name":"n1","type":"bridge"}`), "")
	if err != nil {
		t.Fatal(err)
	}
	if c.BrName != "cni0" || c.DataDir != DefaultDataDir || c.IPAMConf.Type != "" || c.MAC != nil {
		t.Fatalf("defaults wrong: %+v", c)
	}
}

func TestParseBridgeUpstreamConfig(t *testing.T) {
	t.Parallel()
	// An upstream bridge config with every key it knows must parse.
	in := `{"cniVersion":"1.0.0","name":"mynet","type":"bridge","bridge":"mynet0","isGateway":true,
	"isDefaultGateway":true,"forceAddress":false,"ipMasq":true,"ipMasqBackend":"nftables","mtu":1400,
	"hairpinMode":true,"promiscMode":false,"vlan":0,"preserveDefaultVlan":false,"macspoofchk":true,
	"enabledad":false,"disableContainerInterface":false,"portIsolation":true,
	"ipam":{"type":"host-local","subnet":"10.10.0.0/16","rangeStart":"10.10.1.20","rangeEnd":"10.10.3.50","gateway":"10.10.0.254",
	"routes":[{"dst":"0.0.0.0/0"},{"dst":"1.1.1.1/32","gw":"10.10.0.1"}],"dataDir":"/run/my-orchestrator/container-ipam-state"},
	"dns":{"nameservers":["10.1.0.1"]}}`
	c, err := ParseBridge([]byte(in), "IgnoreUnknown=1;MAC=c2:11:22:33:44:55;K8S_POD_NAME=x")
	if err != nil {
		t.Fatal(err)
	}
	if !c.IsGW || c.BrName != "mynet0" || c.MTU != 1400 || c.MAC.String() != "c2:11:22:33:44:55" {
		t.Fatalf("parsed wrong: %+v", c)
	}
}

func TestParseBridgeMACPriority(t *testing.T) {
	t.Parallel()
	in := `{"name":"n","args":{"cni":{"mac":"c2:00:00:00:00:02"}},"runtimeConfig":{"mac":"c2:00:00:00:00:03"}}`
	c, err := ParseBridge([]byte(in), "MAC=c2:00:00:00:00:01")
	if err != nil {
		t.Fatal(err)
	}
	if c.MAC.String() != "c2:00:00:00:00:03" {
		t.Fatalf("MAC = %s, want runtimeConfig's", c.MAC)
	}
}

func TestParseBridgeErrors(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 129)
	cases := []struct {
		name, in, args string
		code           uint
		field, value   string
	}{
		{"malformed json", `{"name":`, "", types.ErrDecodingFailure, "", ""},
		{"missing name", `{"type":"bridge"}`, "", 7, "name", ""},
		{"dotdot name", `{"name":"../x"}`, "", 7, "name", `"../x"`},
		{"slash name", `{"name":"a/b"}`, "", 7, "name", `"a/b"`},
		{"long name", `{"name":"` + long + `"}`, "", 7, "name", long},
		{"long bridge", `{"name":"n","bridge":"abcdefghijklmnop"}`, "", 7, "bridge", "abcdefghijklmnop"},
		{"slash bridge", `{"name":"n","bridge":"a/b"}`, "", 7, "bridge", "a/b"},
		{"bad subnet", `{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/33"}}`, "", 7, "ipam.subnet", "10.0.0.0/33"},
		{"bad ranges subnet", `{"name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"banana"}]]}}`, "", 7, "ipam.ranges[0][0].subnet", "banana"},
		{"host bits", `{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.1/24"}}`, "", 7, "ipam.subnet", "10.0.0.1/24"},
		{"gateway outside", `{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24","gateway":"10.0.1.1"}}`, "", 7, "ipam.gateway", "10.0.1.1"},
		{"bad route", `{"name":"n","ipam":{"type":"host-local","subnet":"10.0.0.0/24","routes":[{"dst":"x"}]}}`, "", 7, "ipam.routes[0].dst", "x"},
		{"bad static", `{"name":"n","ipam":{"type":"static","addresses":[{"address":"10.0.0.1"}]}}`, "", 7, "ipam.addresses[0].address", "10.0.0.1"},
		{"ipam type path", `{"name":"n","ipam":{"type":"../../bin/sh"}}`, "", 7, "ipam.type", "../../bin/sh"},
		{"hairpin and promisc", `{"name":"n","hairpinMode":true,"promiscMode":true}`, "", 7, "hairpinMode", "true"},
		{"mtu", `{"name":"n","mtu":20}`, "", 7, "mtu", "20"},
		{"vlan", `{"name":"n","vlan":5000}`, "", 7, "vlan", "5000"},
		{"vlan gateway name", `{"name":"n","bridge":"berth-bridge01","isGateway":true,"vlan":100}`, "", 7, "bridge", `"berth-bridge01"`},
		{"trunk range", `{"name":"n","vlanTrunk":[{"minID":10,"maxID":5}]}`, "", 7, "vlanTrunk[0].maxID", "5"},
		{"trunk half", `{"name":"n","vlanTrunk":[{"minID":10}]}`, "", 7, "vlanTrunk[0].maxID", ""},
		{"ipam with no interface", `{"name":"n","disableContainerInterface":true,"ipam":{"type":"static"}}`, "", 7, "disableContainerInterface", "true"},
		{"masq backend", `{"name":"n","ipMasqBackend":"ipvs"}`, "", 7, "ipMasqBackend", "ipvs"},
		{"bad mac", `{"name":"n","runtimeConfig":{"mac":"zz"}}`, "", 7, "runtimeConfig.mac", "zz"},
		{"multicast mac", `{"name":"n","args":{"cni":{"mac":"01:00:5e:00:00:01"}}}`, "", 7, "args.cni.mac", "01:00:5e:00:00:01"},
		{"wrong type", `{"name":"n","mtu":"big"}`, "", 7, "mtu", "string"},
		{"relative dataDir", `{"name":"n","dataDir":"x/y"}`, "", 7, "dataDir", "x/y"},
		{"bad CNI_ARGS", `{"name":"n"}`, "novalue", 4, "CNI_ARGS", "novalue"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseBridge([]byte(tc.in), tc.args)
			if err == nil {
				t.Fatal("want error")
			}
			if got := cnierr.Code(err); got != tc.code {
				t.Fatalf("code = %d, want %d (%v)", got, tc.code, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.field) || !strings.Contains(msg, tc.value) {
				t.Fatalf("message %q does not name field %q and value %q", msg, tc.field, tc.value)
			}
		})
	}
}

func TestValidateRuntimeArgs(t *testing.T) {
	t.Parallel()
	for _, id := range []string{"", "../x", "a b", strings.Repeat("a", 257)} {
		var ee *cnierr.EnvError
		if err := ValidateContainerID(id); !errors.As(err, &ee) {
			t.Errorf("ValidateContainerID(%q) = %v, want EnvError", id, err)
		}
	}
	for _, n := range []string{"", "eth0/1", "abcdefghijklmnop", "..", "a b"} {
		if err := ValidateIfName(n); cnierr.Code(err) != 4 {
			t.Errorf("ValidateIfName(%q) = %v, want code 4", n, err)
		}
	}
	if err := ValidateContainerID("0123abcdef_x-y.z"); err != nil {
		t.Error(err)
	}
	if err := ValidateIfName("eth0"); err != nil {
		t.Error(err)
	}
}

func TestParseNull(t *testing.T) {
	t.Parallel()
	if _, err := ParseNull([]byte(`{"cniVersion":"1.1.0","name":"none","type":"null"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := ParseNull([]byte(`{"name":"none","ipam":{"type":"host-local"}}`)); cnierr.Code(err) != 7 {
		t.Fatalf("ipam on null: %v, want code 7", err)
	}
}

// FuzzParseBridge: no input may panic, and every accepted config holds the
// invariants the plugin relies on.
func FuzzParseBridge(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","bridge":"br0","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24"}]]}}`), "MAC=c2:00:00:00:00:01")
	f.Add([]byte(`{"name":"n","vlanTrunk":[{"minID":1,"maxID":4094},{"id":7}],"runtimeConfig":{"mac":"c2:00:00:00:00:02"}}`), "")
	f.Add([]byte(`{"name":"n","ipam":{"type":"static","addresses":[{"address":"fd00::1/64","gateway":"fd00::ffff"}]}}`), "IgnoreUnknown=1")
	f.Fuzz(func(t *testing.T, in []byte, args string) {
		c, err := ParseBridge(in, args)
		if err != nil {
			if cnierr.Code(err) == 999 {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if ValidateNetworkName(c.Name) != nil || ValidateLinkName("bridge", c.BrName) != nil {
			t.Fatalf("accepted unsafe names: %q %q", c.Name, c.BrName)
		}
		if c.HairpinMode && c.PromiscMode {
			t.Fatal("accepted hairpin with promisc")
		}
		for _, v := range c.Vlans {
			if v < 1 || v > 4094 {
				t.Fatalf("accepted vlan %d", v)
			}
		}
	})
}

func FuzzParseNull(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"none","type":"null"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParseNull(in)
		if err == nil && ValidateNetworkName(c.Name) != nil {
			t.Fatalf("accepted unsafe name %q", c.Name)
		}
	})
}
