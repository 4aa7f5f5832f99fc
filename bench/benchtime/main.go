// Command benchtime runs one command and writes its wall-clock duration in
// nanoseconds to a file. bench/run.sh wraps every cnitool call with it, so
// that a sample is exactly one fork+exec+wait of cnitool: no date(1),
// nsenter(1) or env(1) process in the timed region.
//
//	benchtime -o FILE [-netns PATH] [KEY=VALUE...] CMD [ARG...]
//
// -netns PATH starts the command in the network namespace PATH (a
// /var/run/netns/NAME file, or /proc/PID/ns/net), like nsenter --net=PATH:
// benchtime locks its goroutine to its OS thread, joins the namespace on
// that thread (setns) and forks the command from it, so the child starts
// in the namespace; only the network namespace changes (the mount
// namespace, and so /sys, stays the caller's). The thread is never
// unlocked: it dies with the process, and no other goroutine ever runs in
// the joined namespace.
//
// KEY=VALUE arguments before CMD are added to the inherited environment,
// as with env(1); a key given twice takes its last value. CMD without a
// slash is looked up in benchtime's own PATH, before the clock starts.
//
// The timed region is the command's start (fork+exec), run and wait,
// nothing else: joining the namespace, building the environment and the
// PATH lookup come before it. The command inherits stdin, stdout and
// stderr. FILE gets the duration (decimal nanoseconds and a newline)
// whether or not the command succeeds; benchtime exits with the command's
// exit status (128+signal if a signal killed it), 125 if it could not write
// FILE or join the namespace, 127 if the command could not be started.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const usage = "usage: benchtime -o FILE [-netns PATH] [KEY=VALUE...] CMD [ARG...]"

func main() {
	out := flag.String("o", "", "write the duration in nanoseconds to this `file`")
	netns := flag.String("netns", "", "run CMD in the network namespace at this `path`")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, usage)
		flag.PrintDefaults()
	}
	flag.Parse()
	env, argv := splitEnv(flag.Args())
	if *out == "" || len(argv) == 0 {
		flag.Usage()
		os.Exit(2)
	}

	if *netns != "" {
		if err := joinNetns(*netns); err != nil {
			fmt.Fprintln(os.Stderr, "benchtime:", err)
			os.Exit(125)
		}
	}

	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	if len(env) > 0 {
		cmd.Env = append(os.Environ(), env...) // exec keeps a key's last value
	}

	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start) // monotonic clock

	if werr := os.WriteFile(*out, []byte(strconv.FormatInt(elapsed.Nanoseconds(), 10)+"\n"), 0o644); werr != nil {
		fmt.Fprintln(os.Stderr, "benchtime:", werr)
		os.Exit(125)
	}

	var exitErr *exec.ExitError
	switch {
	case err == nil:
		os.Exit(0)
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			os.Exit(128 + int(ws.Signal()))
		}
		os.Exit(exitErr.ExitCode())
	default: // could not start the command
		fmt.Fprintln(os.Stderr, "benchtime:", err)
		os.Exit(127)
	}
}

// splitEnv splits the arguments after the flags into the leading
// KEY=VALUE assignments and the command line, as env(1) does: every
// argument up to the first without '=' (or starting with '=') is an
// assignment.
func splitEnv(args []string) (env, argv []string) {
	i := 0
	for i < len(args) && strings.IndexByte(args[i], '=') > 0 {
		i++
	}
	return args[:i], args[i:]
}

// joinNetns locks the calling goroutine to its OS thread for good and
// moves that thread into the network namespace at path. A child forked
// from this goroutine afterwards starts in that namespace.
func joinNetns(path string) error {
	runtime.LockOSThread() // never unlocked: the thread is no longer like the others
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer unix.Close(fd)
	if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
		return fmt.Errorf("setns %s: %w", path, err)
	}
	return nil
}
