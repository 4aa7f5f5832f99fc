package config

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// DefaultPortmapDir is where portmap keeps host port reservations. It is on
// tmpfs on purpose: a reservation must not outlive the netfilter rules it
// stands for, and those go with a reboot.
const DefaultPortmapDir = "/run/berth/portmap"

// DefaultMarkMasqBit is upstream's default masquerade mark bit.
const DefaultMarkMasqBit = 13

// Portmap backends.
const (
	BackendNFTables = "nftables"
	BackendIPTables = "iptables"
)

// Portmap is a validated config of the portmap plugin: upstream's keys
// plus berth's dataDir.
type Portmap struct {
	types.NetConf
	Backend              *string   `json:"backend,omitempty"`
	SNAT                 *bool     `json:"snat,omitempty"`
	MasqAll              bool      `json:"masqAll,omitempty"`
	MarkMasqBit          *int      `json:"markMasqBit,omitempty"`
	ExternalSetMarkChain *string   `json:"externalSetMarkChain,omitempty"`
	ConditionsV4         *[]string `json:"conditionsV4,omitempty"`
	ConditionsV6         *[]string `json:"conditionsV6,omitempty"`

	// DataDir (berth-only) holds the host's port reservations. Every
	// network on a host must use the same one: it is what makes a host
	// port one container's.
	DataDir string `json:"dataDir,omitempty"`

	RuntimeConfig struct {
		PortMaps []rawMapping `json:"portMappings,omitempty"`
	} `json:"runtimeConfig,omitempty"`

	// Derived by ParsePortmap.
	Mappings []PortMapping   `json:"-"`
	Prev     *current.Result `json:"-"` // prevResult in the current version, or nil
}

// rawMapping is one runtimeConfig.portMappings entry as runtimes send it.
// encoding/json matches keys case-insensitively, so nerdctl's HostPort,
// ContainerPort, Protocol and HostIP decode here as well as kubelet's
// hostPort, containerPort, protocol and hostIP.
type rawMapping struct {
	HostPort      int    `json:"hostPort"`
	ContainerPort int    `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// PortMapping is one validated mapping. HostIP is the zero Addr when the
// mapping is for every local address of both families (no hostIP); an
// unspecified address (0.0.0.0, ::) means every address of its family.
type PortMapping struct {
	Protocol      string // tcp, udp or sctp
	HostIP        netip.Addr
	HostPort      uint16
	ContainerPort uint16
}

func (m PortMapping) String() string {
	return fmt.Sprintf("%s %s -> %d", m.Protocol, netip.AddrPortFrom(m.HostIPOrAny(), m.HostPort), m.ContainerPort)
}

// HostIPOrAny is HostIP, or 0.0.0.0 standing for "every address" when the
// mapping names none (for messages).
func (m PortMapping) HostIPOrAny() netip.Addr {
	if !m.HostIP.IsValid() {
		return netip.IPv4Unspecified()
	}
	return m.HostIP
}

// ParsePortmap decodes and validates a portmap config.
func ParsePortmap(stdin []byte) (*Portmap, error) {
	c := &Portmap{}
	if err := json.Unmarshal(stdin, c); err != nil {
		return nil, decodeError(err)
	}
	if err := ValidateNetworkName(c.Name); err != nil {
		return nil, err
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.NetConf); err != nil {
			return nil, cnierr.Field("prevResult", "(object)", "cannot be decoded as a %s result: %v", c.CNIVersion, err)
		}
		prev, err := current.NewResultFromResult(c.PrevResult)
		if err != nil {
			return nil, cnierr.Field("prevResult", "(object)", "cannot be converted to a %s result: %v", current.ImplementedSpecVersion, err)
		}
		c.Prev = prev
	}
	if c.SNAT == nil {
		t := true
		c.SNAT = &t
	}
	if c.MarkMasqBit != nil && c.ExternalSetMarkChain != nil {
		return nil, cnierr.Field("markMasqBit", *c.MarkMasqBit, "cannot be combined with externalSetMarkChain (%q): the mark is that chain's to set", *c.ExternalSetMarkChain)
	}
	if c.MarkMasqBit == nil {
		b := DefaultMarkMasqBit
		c.MarkMasqBit = &b
	}
	if *c.MarkMasqBit < 0 || *c.MarkMasqBit > 31 {
		return nil, cnierr.Field("markMasqBit", *c.MarkMasqBit, "must be between 0 and 31")
	}
	if c.ExternalSetMarkChain != nil {
		if err := validateChainName("externalSetMarkChain", *c.ExternalSetMarkChain); err != nil {
			return nil, err
		}
	}
	if err := c.chooseBackend(); err != nil {
		return nil, err
	}
	if c.DataDir == "" {
		c.DataDir = DefaultPortmapDir
	} else if !filepath.IsAbs(c.DataDir) || filepath.Clean(c.DataDir) != c.DataDir {
		return nil, cnierr.Field("dataDir", c.DataDir, "must be a clean absolute path")
	}
	ms, err := ParseMappings(c.RuntimeConfig.PortMaps)
	if err != nil {
		return nil, err
	}
	c.Mappings = ms
	return c, nil
}

// chooseBackend checks backend and the backend-specific keys. With no
// backend named, conditions or externalSetMarkChain in iptables syntax pick
// iptables, as upstream; otherwise the caller picks by what the host uses
// (Backend stays nil).
func (c *Portmap) chooseBackend() error {
	var iptKeys, nftKeys []string
	if c.ExternalSetMarkChain != nil {
		iptKeys = append(iptKeys, "externalSetMarkChain")
	}
	for _, k := range []struct {
		name string
		v    *[]string
	}{{"conditionsV4", c.ConditionsV4}, {"conditionsV6", c.ConditionsV6}} {
		if k.v == nil || len(*k.v) == 0 {
			continue
		}
		for i, s := range *k.v {
			if strings.ContainsAny(s, "\n\r\x00") {
				return cnierr.Field(fmt.Sprintf("%s[%d]", k.name, i), s, "must be one line")
			}
		}
		if strings.HasPrefix((*k.v)[0], "-") || (*k.v)[0] == "!" {
			iptKeys = append(iptKeys, k.name)
		} else {
			nftKeys = append(nftKeys, k.name)
		}
	}
	if len(nftKeys) > 0 {
		// berth programs nftables in-process, from structured rules; it
		// has no nft language parser to splice text conditions into.
		return cnierr.Field(nftKeys[0], "(nft syntax)", "berth's nftables backend does not take conditions in nft syntax; give them in iptables syntax with backend \"iptables\"")
	}
	if c.Backend == nil {
		if len(iptKeys) > 0 {
			b := BackendIPTables
			c.Backend = &b
		}
		return nil
	}
	switch *c.Backend {
	case BackendIPTables:
	case BackendNFTables:
		if len(iptKeys) > 0 {
			return cnierr.Field(iptKeys[0], "(set)", "is iptables-only and the config asks for backend \"nftables\"")
		}
	default:
		return cnierr.Field("backend", *c.Backend, "must be %q or %q", BackendNFTables, BackendIPTables)
	}
	return nil
}

// ParseMappings validates runtimeConfig.portMappings: ports 1-65535,
// protocol tcp, udp or sctp (any case; empty means tcp), hostIP an address
// or empty. A mapping given twice is kept once; two mappings of one host
// port, protocol and address to different container ports conflict.
func ParseMappings(raw []rawMapping) ([]PortMapping, error) {
	out := make([]PortMapping, 0, len(raw))
	for i, r := range raw {
		at := func(key string) string { return fmt.Sprintf("runtimeConfig.portMappings[%d].%s", i, key) }
		m := PortMapping{Protocol: strings.ToLower(r.Protocol)}
		switch m.Protocol {
		case "":
			m.Protocol = "tcp"
		case "tcp", "udp", "sctp":
		default:
			return nil, cnierr.Field(at("protocol"), r.Protocol, "must be tcp, udp or sctp")
		}
		if r.HostPort < 1 || r.HostPort > 65535 {
			return nil, cnierr.Field(at("hostPort"), r.HostPort, "must be a port number, 1-65535")
		}
		if r.ContainerPort < 1 || r.ContainerPort > 65535 {
			return nil, cnierr.Field(at("containerPort"), r.ContainerPort, "must be a port number, 1-65535")
		}
		m.HostPort, m.ContainerPort = uint16(r.HostPort), uint16(r.ContainerPort)
		if r.HostIP != "" {
			a, err := netip.ParseAddr(r.HostIP)
			if err != nil || a.Zone() != "" {
				return nil, cnierr.Field(at("hostIP"), r.HostIP, "must be an IPv4 or IPv6 address")
			}
			a = a.Unmap()
			if a.IsMulticast() {
				return nil, cnierr.Field(at("hostIP"), r.HostIP, "is a multicast address")
			}
			m.HostIP = a
		}
		dup := false
		for j, o := range out {
			if o.Protocol != m.Protocol || o.HostPort != m.HostPort || o.HostIP != m.HostIP {
				continue
			}
			if o.ContainerPort != m.ContainerPort {
				return nil, cnierr.Field(at("hostPort"), r.HostPort, "is mapped twice for %s on %s: to container port %d (entry %d) and %d",
					m.Protocol, m.HostIPOrAny(), o.ContainerPort, j, m.ContainerPort)
			}
			dup = true
		}
		if !dup {
			out = append(out, m)
		}
	}
	return out, nil
}

// validateChainName accepts an iptables chain name: 1-28 printable
// characters, no whitespace, not starting with '-' or '!'.
func validateChainName(field, s string) error {
	if s == "" || len(s) > 28 || s[0] == '-' || s[0] == '!' {
		return cnierr.Field(field, s, "must be an iptables chain name (1-28 characters, not starting with - or !)")
	}
	for _, r := range s {
		if r <= ' ' || r > '~' {
			return cnierr.Field(field, s, "must be an iptables chain name (printable ASCII, no spaces)")
		}
	}
	return nil
}
