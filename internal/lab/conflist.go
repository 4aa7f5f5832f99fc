package lab

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/libcni"
)

// ModulePath is the berth module, used to find the repository root.
const ModulePath = "github.com/berth-cni/berth"

// RepoRoot walks up from the working directory to the directory holding
// berth's go.mod.
func RepoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if f, err := os.Open(filepath.Join(dir, "go.mod")); err == nil {
			sc := bufio.NewScanner(f)
			isBerth := sc.Scan() && strings.TrimSpace(sc.Text()) == "module "+ModulePath
			f.Close()
			if isBerth {
				return dir, nil
			}
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of %s above the working directory", ModulePath)
		}
		dir = parent
	}
}

// StatefulTypes are the plugin types that take berth's "dataDir" key.
var StatefulTypes = []string{"bridge", "overlay"}

// ConflistOptions isolates a conflist for one test or demo run. Empty
// fields leave the file's value.
type ConflistOptions struct {
	Name       string // network "name"
	CNIVersion string // top-level "cniVersion"
	// DataDir sets "dataDir" (berth-only: attachment records, default
	// /var/lib/berth) of each plugin whose type is in StatefulTypes.
	DataDir string
	// PortmapDir sets "dataDir" of each portmap plugin: the host's port
	// reservations (default /run/berth/portmap). Each test "host" needs
	// its own.
	PortmapDir string
	// IPAMDataDir sets "ipam"."dataDir" (host-local's leases, default
	// /var/lib/cni/networks) of each plugin with an ipam section.
	IPAMDataDir string
	// Edit, when set, changes each plugin's config in place after the
	// fields above are applied.
	Edit func(plugin map[string]any)
}

// Conflist is a network configuration list, both as bytes (to write for
// cnitool) and as libcni's parsed form.
type Conflist struct {
	Bytes []byte
	List  *libcni.NetworkConfigList
}

// LoadConflist reads the conflist at path and applies o.
func LoadConflist(path string, o ConflistOptions) (*Conflist, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return EditConflist(b, o)
}

// EditConflist applies o to the conflist in b.
func EditConflist(b []byte, o ConflistOptions) (*Conflist, error) {
	var top map[string]any
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, fmt.Errorf("decode conflist: %w", err)
	}
	if o.Name != "" {
		top["name"] = o.Name
	}
	if o.CNIVersion != "" {
		top["cniVersion"] = o.CNIVersion
	}
	plugins, ok := top["plugins"].([]any)
	if !ok {
		return nil, errors.New("conflist has no \"plugins\" list")
	}
	for i, p := range plugins {
		pm, ok := p.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("plugins[%d] is not an object", i)
		}
		typ, _ := pm["type"].(string)
		if o.DataDir != "" && contains(StatefulTypes, typ) {
			pm["dataDir"] = o.DataDir
		}
		if o.PortmapDir != "" && typ == "portmap" {
			pm["dataDir"] = o.PortmapDir
		}
		if ipam, ok := pm["ipam"].(map[string]any); ok && o.IPAMDataDir != "" {
			ipam["dataDir"] = o.IPAMDataDir
		}
		if o.Edit != nil {
			o.Edit(pm)
		}
	}
	out, err := json.MarshalIndent(top, "", "  ")
	if err != nil {
		return nil, err
	}
	list, err := libcni.NetworkConfFromBytes(out)
	if err != nil {
		return nil, fmt.Errorf("parse conflist: %w", err)
	}
	return &Conflist{Bytes: out, List: list}, nil
}

// Write writes the conflist as dir/<name>.conflist (for NETCONFPATH) and
// returns the path.
func (c *Conflist) Write(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, c.List.Name+".conflist")
	return path, os.WriteFile(path, c.Bytes, 0o644)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
