package config

import (
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/berth-cni/berth/pkg/cnierr"
)

func TestParseMacvlanDefaults(t *testing.T) {
	t.Parallel()
	c, err := ParseMacvlan([]byte(`{"cniVersion":"1.1.0","name":"lan","type":"macvlan"}`), "")
	if err != nil {
		t.Fatal(err)
	}
	// No master: the default route's interface is found at ADD, not here.
	if c.Master != "" || c.Mode != ModeBridge || c.MTU != 0 || c.DataDir != DefaultDataDir ||
		c.IPAMConf.Type != "" || c.MAC != nil || c.Promisc || c.HostShim || c.LinkInContainer {
		t.Fatalf("defaults wrong: %+v", c)
	}
}

// An upstream macvlan config with every key upstream knows parses to the
// same meaning.
func TestParseMacvlanUpstreamConfig(t *testing.T) {
	t.Parallel()
	in := `{"cniVersion":"1.0.0","name":"mynet","type":"macvlan","master":"eth0","mode":"vepa","mtu":1400,
	"mac":"c2:11:22:33:44:01","linkInContainer":false,"bcqueuelen":2000,
	"ipam":{"type":"host-local","subnet":"192.168.1.0/24","rangeStart":"192.168.1.200","rangeEnd":"192.168.1.250",
	"gateway":"192.168.1.1","routes":[{"dst":"0.0.0.0/0"}]},
	"dns":{"nameservers":["192.168.1.1"]}}`
	c, err := ParseMacvlan([]byte(in), "IgnoreUnknown=1;K8S_POD_NAME=x")
	if err != nil {
		t.Fatal(err)
	}
	if c.Master != "eth0" || c.Mode != ModeVEPA || c.MTU != 1400 || c.BcQueueLen != 2000 ||
		c.MAC.String() != "c2:11:22:33:44:01" || c.IPAMConf.Type != "host-local" || len(c.DNS.Nameservers) != 1 {
		t.Fatalf("parsed wrong: %+v", c)
	}
}

func TestParseMacvlanModes(t *testing.T) {
	t.Parallel()
	for _, m := range []string{ModeBridge, ModePrivate, ModeVEPA, ModePassthru} {
		c, err := ParseMacvlan([]byte(`{"name":"n","mode":"`+m+`"}`), "")
		if err != nil || c.Mode != m {
			t.Errorf("mode %q: got %+v, %v", m, c, err)
		}
	}
}

// "mac" is the lowest priority: CNI_ARGS, args.cni.mac and
// runtimeConfig.mac each override what comes before (upstream's order).
func TestParseMacvlanMACPriority(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in, args, want string
	}{
		{`{"name":"n","mac":"c2:00:00:00:00:01"}`, "", "c2:00:00:00:00:01"},
		{`{"name":"n","mac":"c2:00:00:00:00:01"}`, "MAC=c2:00:00:00:00:02", "c2:00:00:00:00:02"},
		{`{"name":"n","mac":"c2:00:00:00:00:01","args":{"cni":{"mac":"c2:00:00:00:00:03"}}}`, "MAC=c2:00:00:00:00:02", "c2:00:00:00:00:03"},
		{`{"name":"n","mac":"c2:00:00:00:00:01","runtimeConfig":{"mac":"c2:00:00:00:00:04"}}`, "MAC=c2:00:00:00:00:02", "c2:00:00:00:00:04"},
	} {
		c, err := ParseMacvlan([]byte(tc.in), tc.args)
		if err != nil {
			t.Fatalf("%s %s: %v", tc.in, tc.args, err)
		}
		if c.MAC.String() != tc.want {
			t.Errorf("%s %s: MAC %s, want %s", tc.in, tc.args, c.MAC, tc.want)
		}
	}
}

func TestParseMacvlanBerthKeys(t *testing.T) {
	t.Parallel()
	in := `{"name":"n","master":"eth0","promisc":true,"hostShim":true,"dataDir":"/run/x",
	"ipam":{"type":"static","addresses":[{"address":"192.168.1.9/24"}]}}`
	c, err := ParseMacvlan([]byte(in), "")
	if err != nil {
		t.Fatal(err)
	}
	if !c.Promisc || !c.HostShim || c.DataDir != "/run/x" {
		t.Fatalf("parsed wrong: %+v", c)
	}
}

func TestParseMacvlanErrors(t *testing.T) {
	t.Parallel()
	const ipam = `"ipam":{"type":"host-local","subnet":"192.168.1.0/24"}`
	cases := []struct {
		name, in, args string
		code           uint
		field, value   string
	}{
		{"malformed json", `{"name":`, "", types.ErrDecodingFailure, "", ""},
		{"missing name", `{"type":"macvlan"}`, "", 7, "name", ""},
		{"slash name", `{"name":"a/b"}`, "", 7, "name", `"a/b"`},
		{"long master", `{"name":"n","master":"abcdefghijklmnop"}`, "", 7, "master", "abcdefghijklmnop"},
		{"slash master", `{"name":"n","master":"a/b"}`, "", 7, "master", `"a/b"`},
		{"dotdot master", `{"name":"n","master":".."}`, "", 7, "master", `".."`},
		{"mode", `{"name":"n","mode":"source"}`, "", 7, "mode", `"source"`},
		{"mode case", `{"name":"n","mode":"Bridge"}`, "", 7, "mode", `"Bridge"`},
		{"mtu low", `{"name":"n","mtu":20}`, "", 7, "mtu", "20"},
		{"mtu negative", `{"name":"n","mtu":-1}`, "", 7, "mtu", "-1"},
		{"mtu type", `{"name":"n","mtu":"big"}`, "", 7, "mtu", "string"},
		{"bcqueuelen negative", `{"name":"n","bcqueuelen":-5}`, "", 7, "bcqueuelen", "number -5"},
		{"bad subnet", `{"name":"n","ipam":{"type":"host-local","subnet":"192.168.1.0/33"}}`, "", 7, "ipam.subnet", "192.168.1.0/33"},
		{"ipam type path", `{"name":"n","ipam":{"type":"../sh"}}`, "", 7, "ipam.type", "../sh"},
		{"bad mac", `{"name":"n","mac":"zz"}`, "", 7, "mac", `"zz"`},
		{"multicast mac", `{"name":"n","runtimeConfig":{"mac":"01:00:5e:00:00:01"}}`, "", 7, "runtimeConfig.mac", "01:00:5e:00:00:01"},
		{"bad CNI_ARGS mac", `{"name":"n"}`, "MAC=nope", 7, "CNI_ARGS MAC", "nope"},
		{"bad CNI_ARGS", `{"name":"n"}`, "novalue", 4, "CNI_ARGS", "novalue"},
		{"relative dataDir", `{"name":"n","dataDir":"x"}`, "", 7, "dataDir", "x"},
		{"promisc in container", `{"name":"n","linkInContainer":true,"promisc":true}`, "", 7, "promisc", "linkInContainer"},
		{"shim in container", `{"name":"n","linkInContainer":true,"hostShim":true,` + ipam + `}`, "", 7, "hostShim", "linkInContainer"},
		{"shim private", `{"name":"n","mode":"private","hostShim":true,` + ipam + `}`, "", 7, "hostShim", `"private"`},
		{"shim passthru", `{"name":"n","mode":"passthru","hostShim":true,` + ipam + `}`, "", 7, "hostShim", `"passthru"`},
		{"shim without ipam", `{"name":"n","hostShim":true}`, "", 7, "hostShim", "ipam"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParseMacvlan([]byte(tc.in), tc.args)
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

// FuzzParseMacvlan: no input may panic or give an unclassified error, and
// every accepted config holds the invariants the plugin relies on.
func FuzzParseMacvlan(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","master":"eth0","mode":"bridge","ipam":{"type":"host-local","ranges":[[{"subnet":"192.168.1.0/24"}]]}}`), "MAC=c2:00:00:00:00:01")
	f.Add([]byte(`{"name":"n","mode":"passthru","mtu":9000,"mac":"c2:00:00:00:00:02","linkInContainer":true}`), "")
	f.Add([]byte(`{"name":"n","promisc":true,"hostShim":true,"ipam":{"type":"static","addresses":[{"address":"fd00::1/64"}]}}`), "IgnoreUnknown=1")
	f.Add([]byte(`{"name":"n","master":"eth0.50","runtimeConfig":{"mac":"c2:00:00:00:00:03"},"args":{"cni":{"mac":"c2:00:00:00:00:04"}}}`), "")
	f.Fuzz(func(t *testing.T, in []byte, args string) {
		c, err := ParseMacvlan(in, args)
		if err != nil {
			if cnierr.Code(err) == 999 {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if ValidateNetworkName(c.Name) != nil {
			t.Fatalf("accepted unsafe name %q", c.Name)
		}
		if c.Master != "" && ValidateLinkName("master", c.Master) != nil {
			t.Fatalf("accepted unsafe master %q", c.Master)
		}
		switch c.Mode {
		case ModeBridge, ModePrivate, ModeVEPA, ModePassthru:
		default:
			t.Fatalf("accepted mode %q", c.Mode)
		}
		if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
			t.Fatalf("accepted mtu %d", c.MTU)
		}
		if c.HostShim && (c.Mode != ModeBridge || c.LinkInContainer || c.IPAMConf.Type == "") {
			t.Fatalf("accepted hostShim with mode %q, linkInContainer %v, ipam %q", c.Mode, c.LinkInContainer, c.IPAMConf.Type)
		}
		if c.Promisc && c.LinkInContainer {
			t.Fatal("accepted promisc with linkInContainer")
		}
		if c.MAC != nil && (len(c.MAC) != 6 || c.MAC[0]&1 == 1) {
			t.Fatalf("accepted MAC %s", c.MAC)
		}
	})
}
