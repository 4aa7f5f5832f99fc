// Package overlay holds what the overlay node agent (cmd/berth-overlayd)
// and the overlay CNI plugin share on one host: the local state file the
// agent writes and the plugin reads. It touches files under the state
// directory it is given (/run/berth/overlay by default).
package overlay

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/state"
)

// DefaultStateDir is where the agent writes and the plugin reads Local.
const DefaultStateDir = "/run/berth/overlay"

// Local is what the agent tells the plugins on its host about one network,
// written to <stateDir>/<network>.json whenever it changes.
type Local struct {
	Network string       `json:"network"`
	CIDR    netip.Prefix `json:"cidr"`    // the cluster network
	Subnet  netip.Prefix `json:"subnet"`  // this host's lease
	Gateway netip.Addr   `json:"gateway"` // the bridge's address in Subnet: its first host address
	MTU     int          `json:"mtu"`     // for the bridge and the containers' veths
	VNI     uint32       `json:"vni"`
	Device  string       `json:"device"` // the VXLAN device
	// Ready is true while the agent holds its lease and has programmed its
	// peers at least once since it started; false while it is starting or
	// the lease was lost. The file stays when the agent exits: DEL still
	// needs Subnet.
	Ready  bool      `json:"ready"`
	Reason string    `json:"reason,omitempty"` // why not ready
	PID    int       `json:"pid"`              // the agent's
	Since  time.Time `json:"since"`            // when Ready last changed
}

// LocalPath is the file of network under dir.
func LocalPath(dir, network string) string {
	return filepath.Join(dir, network+".json")
}

// WriteLocal replaces the file of l.Network under dir atomically.
func WriteLocal(dir string, l Local) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write overlay state: %w", err)
	}
	b, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return fmt.Errorf("write overlay state: %w", err)
	}
	return state.WriteAtomic(LocalPath(dir, l.Network), append(b, '\n'))
}

// ErrNoAgent is returned (wrapped) by ReadLocal when no agent ever wrote
// the network's file.
var ErrNoAgent = errors.New("no overlay agent state")

// ReadLocal reads the file of network under dir.
func ReadLocal(dir, network string) (Local, error) {
	b, err := os.ReadFile(LocalPath(dir, network))
	if errors.Is(err, fs.ErrNotExist) {
		return Local{}, fmt.Errorf("%w for network %q in %s: is berth-overlayd running?", ErrNoAgent, network, dir)
	}
	if err != nil {
		return Local{}, fmt.Errorf("read overlay state: %w", err)
	}
	var l Local
	if err := json.Unmarshal(b, &l); err != nil {
		return Local{}, fmt.Errorf("read overlay state %s: %w", LocalPath(dir, network), err)
	}
	return l, nil
}

// Live reports whether l says ready and its agent still runs (it holds
// the agent lock of l's network under dir); when not, reason says why.
func (l Local) Live(dir string) (ok bool, reason string) {
	if !l.Ready {
		if l.Reason != "" {
			return false, "agent not ready: " + l.Reason
		}
		return false, "agent not ready"
	}
	running, err := agentRunning(dir, l.Network)
	if err != nil {
		return false, err.Error()
	}
	if !running {
		return false, fmt.Sprintf("agent (pid %d) is not running", l.PID)
	}
	return true, ""
}

// lockPath is the agent lock of network under dir.
func lockPath(dir, network string) string {
	return filepath.Join(dir, network+".lock")
}

// ErrAgentRunning is returned (wrapped) by LockAgent when another agent
// holds the network's lock.
var ErrAgentRunning = errors.New("another agent runs for this network")

// LockAgent takes the agent lock of network under dir, an exclusive flock
// on <dir>/<network>.lock held until unlock or the agent's death. Plugins
// test it (Live) rather than the PID in the state file: the kernel drops
// it when the agent dies, whichever PID namespaces the agent and the
// plugin run in (an agent in a pod without hostPID, say).
//
// Equivalent: flock -xn $dir/$network.lock berth-overlayd …
func LockAgent(dir, network string) (unlock func() error, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	f, err := os.OpenFile(lockPath(dir, network), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("agent lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %q with state dir %s (%s is locked)", ErrAgentRunning, network, dir, f.Name())
		}
		return nil, fmt.Errorf("agent lock %s: %w", f.Name(), err)
	}
	return f.Close, nil
}

// agentRunning reports whether an agent holds network's lock under dir.
func agentRunning(dir, network string) (bool, error) {
	f, err := os.Open(lockPath(dir, network))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("agent lock: %w", err)
	}
	defer f.Close()
	switch err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); {
	case errors.Is(err, unix.EWOULDBLOCK):
		return true, nil
	case err != nil:
		return false, fmt.Errorf("agent lock %s: %w", f.Name(), err)
	}
	return false, nil // closing f drops the lock just taken
}
