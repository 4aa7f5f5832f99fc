package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// QEMU is how the VM boots.
type QEMU struct {
	Binary  string // qemu-system-x86_64
	BIOS    string // qboot, which boots the ELF vmlinux by PVH
	Kernel  string // the ELF vmlinux
	Initrd  string // the newc cpio
	CPUs    int
	MemMiB  int
	Accel   string   // tcg,thread=multi: KVM cannot run a stock kernel on this project's machines
	CPU     string   // -cpu
	Append  []string // more kernel command line
	Timeout time.Duration
}

// DefaultBIOS is where Debian's qemu-system-data puts qboot.
const DefaultBIOS = "/usr/share/qemu/qboot.rom"

// Args is qemu's command line: no network device (-net none) and no
// default devices, the serial port on stdio as the console, no reboot
// (a panic or poweroff ends qemu). Pure.
func (q QEMU) Args() []string {
	cmdline := append([]string{"console=ttyS0", "panic=-1", "quiet", "rdinit=/init"}, q.Append...)
	return []string{
		"-accel", q.Accel, "-cpu", q.CPU,
		"-smp", strconv.Itoa(q.CPUs), "-m", strconv.Itoa(q.MemMiB),
		"-net", "none", "-nodefaults", "-no-user-config", "-nographic",
		"-serial", "stdio", "-monitor", "none", "-no-reboot",
		"-bios", q.BIOS,
		"-kernel", q.Kernel, "-initrd", q.Initrd,
		"-append", strings.Join(cmdline, " "),
	}
}

// ErrTimeout is a VM that ran past its timeout (and was killed).
var ErrTimeout = errors.New("the VM ran past its timeout")

// ErrPrerequisite marks a host program or file the VM layer needs and
// does not find (qemu, its firmware, xz, apt): make test-vm skips on it
// unless CI is set.
var ErrPrerequisite = errors.New("missing prerequisite")

// CheckQEMU finds q's qemu binary and firmware.
func CheckQEMU(q QEMU) error {
	if _, err := exec.LookPath(q.Binary); err != nil {
		return fmt.Errorf("%w: %s: %v (Debian: apt-get install qemu-system-x86)", ErrPrerequisite, q.Binary, err)
	}
	if _, err := os.Stat(q.BIOS); err != nil {
		return fmt.Errorf("%w: qemu firmware: %v (Debian: apt-get install qemu-system-x86, whose qemu-system-data has qboot.rom)", ErrPrerequisite, err)
	}
	return nil
}

// Boot runs the VM to its end, copying its console (serial on stdout,
// qemu's own messages on stderr) to console; past q.Timeout (or ctx's end)
// qemu is killed by its PID and Boot returns ErrTimeout.
//
// Equivalent: timeout $t qemu-system-x86_64 $(q.Args)
func Boot(ctx context.Context, q QEMU, console io.Writer) error {
	if err := CheckQEMU(q); err != nil {
		return err
	}
	cmd := exec.Command(q.Binary, q.Args()...)
	cmd.Stdout, cmd.Stderr = console, console
	cmd.Stdin = nil
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start qemu: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	timer := time.NewTimer(q.Timeout)
	defer timer.Stop()
	select {
	case err := <-exited:
		if err != nil {
			return fmt.Errorf("qemu: %w", err)
		}
		return nil
	case <-timer.C:
	case <-ctx.Done():
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill qemu (pid %d): %w", cmd.Process.Pid, err)
	}
	<-exited
	if ctx.Err() != nil {
		return fmt.Errorf("qemu (pid %d) killed: %w", cmd.Process.Pid, ctx.Err())
	}
	return fmt.Errorf("%w of %v: qemu (pid %d) killed", ErrTimeout, q.Timeout, cmd.Process.Pid)
}
