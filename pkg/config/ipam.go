package config

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// IPAM is the part of an "ipam" section berth reads itself. The whole raw
// section still goes to the IPAM plugin untouched; berth checks the fields
// of the IPAM plugins it ships (host-local, static) before it creates
// anything, so a bad CIDR fails the ADD with code 7 and leaves nothing.
type IPAM struct {
	Type    string       `json:"type"`
	Subnet  string       `json:"subnet,omitempty"`
	Start   string       `json:"rangeStart,omitempty"`
	End     string       `json:"rangeEnd,omitempty"`
	Gateway string       `json:"gateway,omitempty"`
	Ranges  [][]ipRange  `json:"ranges,omitempty"`
	Routes  []ipamRoute  `json:"routes,omitempty"`
	Addrs   []staticAddr `json:"addresses,omitempty"`
	DataDir string       `json:"dataDir,omitempty"`
}

type ipRange struct {
	Subnet  string `json:"subnet"`
	Start   string `json:"rangeStart,omitempty"`
	End     string `json:"rangeEnd,omitempty"`
	Gateway string `json:"gateway,omitempty"`
}

type ipamRoute struct {
	Dst string `json:"dst"`
	GW  string `json:"gw,omitempty"`
}

type staticAddr struct {
	Address string `json:"address"`
	Gateway string `json:"gateway,omitempty"`
}

// Validate checks the IPAM section. An empty Type means no IPAM (layer 2).
func (c *IPAM) Validate() error {
	if c.Type == "" {
		return nil
	}
	if c.Type != strings.TrimSpace(c.Type) || strings.ContainsAny(c.Type, "/\\") || c.Type == "." || c.Type == ".." {
		return cnierr.Field("ipam.type", c.Type, "not a plugin name")
	}
	for i, r := range c.Routes {
		if _, err := parsePrefix(fmt.Sprintf("ipam.routes[%d].dst", i), r.Dst); err != nil {
			return err
		}
		if r.GW != "" {
			if _, err := parseAddr(fmt.Sprintf("ipam.routes[%d].gw", i), r.GW); err != nil {
				return err
			}
		}
	}
	switch c.Type {
	case "host-local":
		return c.validateHostLocal()
	case "static":
		for i, a := range c.Addrs {
			if _, err := parsePrefix(fmt.Sprintf("ipam.addresses[%d].address", i), a.Address); err != nil {
				return err
			}
			if a.Gateway != "" {
				if _, err := parseAddr(fmt.Sprintf("ipam.addresses[%d].gateway", i), a.Gateway); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

func (c *IPAM) validateHostLocal() error {
	if c.Subnet != "" {
		if err := validateRange("ipam", ipRange{Subnet: c.Subnet, Start: c.Start, End: c.End, Gateway: c.Gateway}); err != nil {
			return err
		}
	}
	if c.Subnet == "" && len(c.Ranges) == 0 {
		return cnierr.Field("ipam.ranges", nil, "host-local needs a subnet or ranges")
	}
	for i, set := range c.Ranges {
		if len(set) == 0 {
			return cnierr.Field(fmt.Sprintf("ipam.ranges[%d]", i), "[]", "an empty range set")
		}
		for j, r := range set {
			if err := validateRange(fmt.Sprintf("ipam.ranges[%d][%d]", i, j), r); err != nil {
				return err
			}
		}
	}
	return nil
}

func validateRange(at string, r ipRange) error {
	p, err := parsePrefix(at+".subnet", r.Subnet)
	if err != nil {
		return err
	}
	if p.Masked() != p {
		return cnierr.Field(at+".subnet", r.Subnet, "host bits are set (did you mean %s?)", p.Masked())
	}
	if p.Addr().Is4() && p.Bits() > 30 || p.Addr().Is6() && p.Bits() > 126 {
		return cnierr.Field(at+".subnet", r.Subnet, "too small to hold a gateway and a container")
	}
	for _, f := range []struct{ key, val string }{{"rangeStart", r.Start}, {"rangeEnd", r.End}, {"gateway", r.Gateway}} {
		if f.val == "" {
			continue
		}
		a, err := parseAddr(at+"."+f.key, f.val)
		if err != nil {
			return err
		}
		if !p.Contains(a) {
			return cnierr.Field(at+"."+f.key, f.val, "outside subnet %s", p)
		}
	}
	return nil
}

func parsePrefix(field, s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return netip.Prefix{}, cnierr.Field(field, s, "not a CIDR (want address/length, like 10.22.0.0/16)")
	}
	return p, nil
}

func parseAddr(field, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, cnierr.Field(field, s, "not an IP address")
	}
	return a, nil
}

// decodeIPAM reads the "ipam" section of raw config bytes.
func decodeIPAM(raw json.RawMessage) (IPAM, error) {
	var c IPAM
	if len(raw) == 0 || string(raw) == "null" {
		return c, nil
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, cnierr.Field("ipam", string(raw), "%v", err)
	}
	return c, c.Validate()
}
