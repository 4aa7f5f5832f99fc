package overlay

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// Liveness is the agent lock, not the PID: a ready file with no agent
// holding the lock is not live, and a second agent cannot take the lock.
func TestLiveIsTheAgentLock(t *testing.T) {
	dir := t.TempDir()
	l := Local{Network: "ov", Subnet: netip.MustParsePrefix("10.244.3.0/24"), Ready: true, PID: 1}
	if err := WriteLocal(dir, l); err != nil {
		t.Fatal(err)
	}
	got, err := ReadLocal(dir, "ov")
	if err != nil || got.Subnet != l.Subnet {
		t.Fatalf("ReadLocal = %+v, %v", got, err)
	}
	if ok, why := got.Live(dir); ok || !strings.Contains(why, "not running") {
		t.Errorf("no agent lock: Live = %v, %q; want not running", ok, why)
	}
	unlock, err := LockAgent(dir, "ov")
	if err != nil {
		t.Fatal(err)
	}
	if ok, why := got.Live(dir); !ok {
		t.Errorf("agent lock held: Live = false, %q", why)
	}
	if _, err := LockAgent(dir, "ov"); !errors.Is(err, ErrAgentRunning) {
		t.Errorf("second LockAgent = %v, want ErrAgentRunning", err)
	}
	notReady := got
	notReady.Ready, notReady.Reason = false, "starting"
	if ok, why := notReady.Live(dir); ok || !strings.Contains(why, "starting") {
		t.Errorf("not ready: Live = %v, %q", ok, why)
	}
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	if ok, _ := got.Live(dir); ok {
		t.Error("lock released, still live")
	}
	if _, err := ReadLocal(dir, "other"); !errors.Is(err, ErrNoAgent) {
		t.Errorf("ReadLocal of an unknown network = %v, want ErrNoAgent", err)
	}
}
