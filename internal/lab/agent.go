package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"syscall"
	"time"

	"github.com/berth-cni/berth/pkg/overlay"
)

// Agent is a berth-overlayd process running in a lab namespace.
type Agent struct {
	NS       *NS
	Network  string // its -network
	StateDir string // its -state-dir
	cmd      *exec.Cmd
	done     chan error
	exitErr  error
	exited   bool
}

// StartAgent starts bin (berth-overlayd) in ns with -network network,
// -state-dir stateDir and the other args; its output goes to log. NS.Delete
// kills it if it still runs.
//
// Equivalent: ip netns exec $ns berth-overlayd -network $network -state-dir $stateDir $args &
func StartAgent(ns *NS, bin, network, stateDir string, args []string, log io.Writer) (*Agent, error) {
	return StartAgentWith(ns, AgentOptions{Bin: bin, Network: network, StateDir: stateDir, Args: args, Log: log})
}

// AgentOptions says how StartAgentWith runs berth-overlayd.
type AgentOptions struct {
	Bin      string   // the berth-overlayd binary
	Network  string   // its -network
	StateDir string   // its -state-dir
	Args     []string // its other flags
	Log      io.Writer
	// Nsenter starts the agent the way an operator does, through
	// nsenter --net=$ns, rather than directly. nsenter execs the agent,
	// so its PID is still the one WaitReady expects in the state file.
	Nsenter bool
}

// StartAgentWith starts berth-overlayd in ns as opts say; its stdout and
// stderr go to opts.Log. NS.Delete kills it if it still runs.
//
// Equivalent: ip netns exec $ns berth-overlayd -network $network -state-dir $stateDir $args &
// or, with Nsenter, nsenter --net=/var/run/netns/$ns berth-overlayd … &
func StartAgentWith(ns *NS, opts AgentOptions) (*Agent, error) {
	argv := append([]string{opts.Bin, "-network", opts.Network, "-state-dir", opts.StateDir}, opts.Args...)
	if opts.Nsenter {
		argv = append([]string{"nsenter", "--net=" + ns.Path}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = opts.Log, opts.Log
	if err := ns.Start(cmd); err != nil {
		return nil, err
	}
	a := &Agent{NS: ns, Network: opts.Network, StateDir: opts.StateDir, cmd: cmd, done: make(chan error, 1)}
	go func() {
		err := cmd.Wait()
		ns.forget(cmd.Process)
		a.done <- err
	}()
	return a, nil
}

// PID is the agent's process ID.
func (a *Agent) PID() int { return a.cmd.Process.Pid }

// WaitReady waits until the agent's state file says ready and returns it;
// it fails at once if the agent exits.
func (a *Agent) WaitReady(ctx context.Context) (overlay.Local, error) {
	var last error
	for {
		l, err := overlay.ReadLocal(a.StateDir, a.Network)
		if err == nil {
			ok, why := l.Live(a.StateDir)
			if ok && l.PID == a.cmd.Process.Pid {
				return l, nil
			}
			err = errors.New(why)
			if ok {
				err = fmt.Errorf("state file written by pid %d, not this agent's %d", l.PID, a.cmd.Process.Pid)
			}
		}
		last = err
		select {
		case err := <-a.done:
			a.exited, a.exitErr = true, err
			return overlay.Local{}, fmt.Errorf("agent in %s exited before it was ready: %v", a.NS.Name, err)
		case <-ctx.Done():
			return overlay.Local{}, fmt.Errorf("agent in %s not ready: %v (%w)", a.NS.Name, last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop sends sig and waits up to 10 s for the agent to exit, then kills it.
// It returns the exit error for SIGTERM (nil on a clean exit), nil for
// SIGKILL. Stopping a stopped agent returns nil.
func (a *Agent) Stop(sig syscall.Signal) error {
	if a.exited {
		return nil
	}
	_ = a.cmd.Process.Signal(sig)
	var err error
	select {
	case err = <-a.done:
	case <-time.After(10 * time.Second):
		_ = a.cmd.Process.Kill()
		err = <-a.done
		err = fmt.Errorf("agent in %s ignored %v for 10 s: killed (%v)", a.NS.Name, sig, err)
	}
	a.exited, a.exitErr = true, err
	if sig == syscall.SIGKILL {
		return nil
	}
	return err
}
