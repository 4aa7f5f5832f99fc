package config

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/cnierr"
)

const prev = `"prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"eth0","sandbox":"/x"}],"ips":[{"address":"10.88.0.5/16","interface":0}]}`

func TestParsePortmap(t *testing.T) {
	c, err := ParsePortmap([]byte(`{"cniVersion":"1.1.0","name":"n","type":"portmap",` + prev + `,
		"runtimeConfig":{"portMappings":[
			{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
			{"HostPort":53,"ContainerPort":5353,"Protocol":"UDP","HostIP":"0.0.0.0"},
			{"hostPort":8080,"containerPort":80,"protocol":"tcp"},
			{"hostPort":9,"containerPort":9,"hostIP":"::ffff:10.0.0.1"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []PortMapping{
		{Protocol: "tcp", HostPort: 8080, ContainerPort: 80},
		{Protocol: "udp", HostIP: netip.MustParseAddr("0.0.0.0"), HostPort: 53, ContainerPort: 5353},
		{Protocol: "tcp", HostIP: netip.MustParseAddr("10.0.0.1"), HostPort: 9, ContainerPort: 9},
	}
	if len(c.Mappings) != len(want) {
		t.Fatalf("mappings %v, want %v", c.Mappings, want)
	}
	for i := range want {
		if c.Mappings[i] != want[i] {
			t.Errorf("mapping %d = %v, want %v", i, c.Mappings[i], want[i])
		}
	}
	if !*c.SNAT || *c.MarkMasqBit != 13 || c.DataDir != DefaultPortmapDir || c.Backend != nil || c.Prev == nil || len(c.Prev.IPs) != 1 {
		t.Errorf("defaults: snat %v bit %d dir %q backend %v prev %v", *c.SNAT, *c.MarkMasqBit, c.DataDir, c.Backend, c.Prev)
	}
}

func TestParsePortmapErrors(t *testing.T) {
	for _, tc := range []struct{ in, field, value string }{
		{`"runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":80}]}`, "runtimeConfig.portMappings[0].hostPort", "0"},
		{`"runtimeConfig":{"portMappings":[{"hostPort":70000,"containerPort":80}]}`, "runtimeConfig.portMappings[0].hostPort", "70000"},
		{`"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":-1}]}`, "runtimeConfig.portMappings[0].containerPort", "-1"},
		{`"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"protocol":"icmp"}]}`, "runtimeConfig.portMappings[0].protocol", "icmp"},
		{`"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80,"hostIP":"10.0.0.300"}]}`, "runtimeConfig.portMappings[0].hostIP", "10.0.0.300"},
		{`"runtimeConfig":{"portMappings":[{"hostPort":80,"containerPort":80},{"hostPort":80,"containerPort":81}]}`, "runtimeConfig.portMappings[1].hostPort", "80"},
		{`"markMasqBit":32`, "markMasqBit", "32"},
		{`"markMasqBit":1,"externalSetMarkChain":"KUBE-MARK-MASQ"`, "markMasqBit", "1"},
		{`"externalSetMarkChain":"-j ACCEPT"`, "externalSetMarkChain", "-j ACCEPT"},
		{`"backend":"ebpf"`, "backend", "ebpf"},
		{`"backend":"nftables","externalSetMarkChain":"KUBE-MARK-MASQ"`, "externalSetMarkChain", ""},
		{`"conditionsV4":["ip saddr 10.0.0.0/8"]`, "conditionsV4", ""},
		{`"dataDir":"rel/dir"`, "dataDir", "rel/dir"},
		{`"dataDir":"/run/../etc"`, "dataDir", "/run/../etc"},
		{`"prevResult":{"cniVersion":"1.1.0","ips":[{"address":"nonsense"}]}`, "prevResult", ""},
	} {
		_, err := ParsePortmap([]byte(`{"cniVersion":"1.1.0","name":"n",` + tc.in + `}`))
		if err == nil {
			t.Errorf("%s: accepted", tc.in)
			continue
		}
		if code := cnierr.Code(err); code != 7 {
			t.Errorf("%s: code %d, want 7: %v", tc.in, code, err)
		}
		if !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.value) {
			t.Errorf("%s: message does not name %s %q: %v", tc.in, tc.field, tc.value, err)
		}
	}
}

// iptables-syntax conditions or externalSetMarkChain pick iptables when no
// backend is named, as upstream.
func TestPortmapBackendChoice(t *testing.T) {
	c, err := ParsePortmap([]byte(`{"name":"n","conditionsV4":["!","-d","192.168.0.0/16"]}`))
	if err != nil || c.Backend == nil || *c.Backend != BackendIPTables {
		t.Errorf("conditions in iptables syntax: backend %v, err %v", c.Backend, err)
	}
}

func FuzzParsePortmap(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n",` + prev + `,"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"::"}]}}`))
	f.Add([]byte(`{"name":"n","runtimeConfig":{"portMappings":[{"HostPort":53,"ContainerPort":53,"Protocol":"udp","HostIP":"0.0.0.0"}]},"conditionsV4":["-s","1.2.3.4"]}`))
	f.Add([]byte(`{"name":"n","backend":"nftables","snat":false,"masqAll":true,"markMasqBit":5,"dataDir":"/tmp/x"}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		c, err := ParsePortmap(in)
		if err != nil {
			if cnierr.Code(err) == 999 {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		if ValidateNetworkName(c.Name) != nil || !filepath.IsAbs(c.DataDir) {
			t.Fatalf("accepted unsafe name %q or dataDir %q", c.Name, c.DataDir)
		}
		for i, m := range c.Mappings {
			if m.HostPort == 0 || m.ContainerPort == 0 || (m.Protocol != "tcp" && m.Protocol != "udp" && m.Protocol != "sctp") {
				t.Fatalf("accepted mapping %v", m)
			}
			if m.HostIP.IsValid() && (m.HostIP.Zone() != "" || m.HostIP.Is4In6()) {
				t.Fatalf("accepted host address %v", m.HostIP)
			}
			for _, o := range c.Mappings[:i] {
				if o.Protocol == m.Protocol && o.HostPort == m.HostPort && o.HostIP == m.HostIP {
					t.Fatalf("kept a duplicate key %v", m)
				}
			}
		}
	})
}

// Attachment checks the three names an owner is made of, each reported
// with its own key and code (7 for the network name, a config key; 4 for
// the CNI_* variables).
func TestAttachment(t *testing.T) {
	t.Parallel()
	o, err := Attachment("n1", "c1", "eth0")
	if err != nil || o.Network != "n1" || o.ContainerID != "c1" || o.IfName != "eth0" {
		t.Fatalf("Attachment = %+v, %v", o, err)
	}
	for _, tc := range []struct {
		network, id, ifName string
		code                uint
		want                string
	}{
		{"../x", "c1", "eth0", 7, "name"},
		{"n1", "", "eth0", 4, "CNI_CONTAINERID"},
		{"n1", "c/1", "eth0", 4, "CNI_CONTAINERID"},
		{"n1", "c1", "eth0:1", 4, "CNI_IFNAME"},
		{"n1", "c1", "", 4, "CNI_IFNAME"},
	} {
		_, err := Attachment(tc.network, tc.id, tc.ifName)
		if err == nil || cnierr.Code(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Attachment(%q, %q, %q) = %v (code %d), want code %d naming %s", tc.network, tc.id, tc.ifName, err, cnierr.Code(err), tc.code, tc.want)
		}
	}
}
