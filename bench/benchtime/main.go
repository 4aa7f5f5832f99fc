// Command benchtime runs one command and writes its wall-clock duration in
// nanoseconds to a file. bench/run.sh wraps every cnitool call with it so
// the timing includes no fork of date(1).
//
//	benchtime -o FILE CMD [ARG...]
//
// The command inherits stdin, stdout, stderr and the environment. FILE gets
// the duration (decimal nanoseconds and a newline) whether or not the command
// succeeds; benchtime exits with the command's exit status (128+signal if a
// signal killed it).
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

func main() {
	out := flag.String("o", "", "write the duration in nanoseconds to this `file`")
	flag.Usage = func() {
		fmt.Fprintln(os.Stderr, "usage: benchtime -o FILE CMD [ARG...]")
		flag.PrintDefaults()
	}
	flag.Parse()
	if *out == "" || flag.NArg() == 0 {
		flag.Usage()
		os.Exit(2)
	}

	cmd := exec.Command(flag.Arg(0), flag.Args()[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr

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
