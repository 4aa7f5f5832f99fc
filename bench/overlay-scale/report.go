package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"golang.org/x/sys/unix"
)

// row is one figure of the report, with the target beside it.
type row struct {
	figure, value, target, verdict string
}

// report is what a run measured.
type report struct {
	title   string
	machine string
	rows    []row
	notes   []string
}

func (r *report) add(figure, value string) {
	r.rows = append(r.rows, row{figure: figure, value: value})
}

// check adds a figure with a target and whether it was met.
func (r *report) check(figure, value, target string, met bool) {
	v := "MISSED"
	if met {
		v = "met"
	}
	r.rows = append(r.rows, row{figure, value, target, v})
}

func (r *report) note(format string, a ...any) { r.notes = append(r.notes, fmt.Sprintf(format, a...)) }

func (r *report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n%s\n\n", r.title, r.machine)
	tw := tabwriter.NewWriter(&b, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "figure\tmeasured\ttarget (issue 11)")
	for _, x := range r.rows {
		t := x.target
		if x.verdict != "" {
			t += " (" + x.verdict + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", x.figure, x.value, t)
	}
	tw.Flush()
	for _, n := range r.notes {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	return b.String()
}

// samples are propagation times of one kind (joins, leaves).
type samples struct {
	mu     sync.Mutex
	d      []time.Duration
	calls  []time.Duration // the store calls' own times
	early  int             // the kernel had it before the store call returned: counted as 0
	missed int             // not within the wait limit
}

// add records the time from the store call's return to the kernel's
// change, and the call's own time.
func (s *samples) add(w write, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, w.done.Sub(w.start))
	d := at.Sub(w.done)
	if d < 0 {
		s.early++
		d = 0
	}
	s.d = append(s.d, d)
}

func (s *samples) miss() {
	s.mu.Lock()
	s.missed++
	s.mu.Unlock()
}

// pct is the nearest-rank percentile p of the samples.
func (s *samples) pct(p float64) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.d) == 0 {
		return 0
	}
	v := slices.Sorted(slices.Values(s.d))
	i := int(math.Ceil(p/100*float64(len(v)))) - 1
	return v[min(max(i, 0), len(v)-1)]
}

// callsString is the store calls' p50 and p99.
func (s *samples) callsString() string {
	s.mu.Lock()
	c := &samples{d: slices.Clone(s.calls)}
	s.mu.Unlock()
	return fmt.Sprintf("p50 %s, p99 %s", msStr(c.pct(50)), msStr(c.pct(99)))
}

func (s *samples) n() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.d)
}

// String is "p50 … p99 … max … ms (n=…)", with the early and missed.
func (s *samples) String() string {
	out := fmt.Sprintf("p50 %s, p99 %s, max %s (n=%d)", msStr(s.pct(50)), msStr(s.pct(99)), msStr(s.pct(100)), s.n())
	if s.early > 0 {
		out += fmt.Sprintf(", %d before the call returned", s.early)
	}
	if s.missed > 0 {
		out += fmt.Sprintf(", %d MISSED", s.missed)
	}
	return out
}

func msStr(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	if ms < 10 {
		return fmt.Sprintf("%.2f ms", ms)
	}
	return fmt.Sprintf("%.1f ms", ms)
}

// procStat is a process's memory and CPU at one moment.
type procStat struct {
	rssKB, hwmKB int64
	cpu          time.Duration // utime + stime
}

func (p procStat) mem() string {
	return fmt.Sprintf("VmRSS %.1f MB, VmHWM %.1f MB", float64(p.rssKB)/1024, float64(p.hwmKB)/1024)
}

// clkTck is USER_HZ, the unit of /proc/<pid>/stat's times: 100 on every
// Linux architecture Go runs on.
const clkTck = 100

// readProc reads /proc/<pid>/status (VmRSS, VmHWM) and /proc/<pid>/stat
// (utime, stime).
//
// Equivalent: grep -E 'VmRSS|VmHWM' /proc/$pid/status; awk '{print $14+$15}' /proc/$pid/stat
func readProc(pid int) (procStat, error) {
	var p procStat
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	for line := range strings.Lines(string(st)) {
		k, v, _ := strings.Cut(line, ":")
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(f[0], 10, 64)
		switch k {
		case "VmRSS":
			p.rssKB = n
		case "VmHWM":
			p.hwmKB = n
		}
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, err
	}
	// Fields after the command, which may hold spaces: state is field 3,
	// utime 14, stime 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b)[i+1:])
	if i < 0 || len(f) < 13 {
		return p, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return p, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, f[11], f[12])
	}
	p.cpu = time.Duration(ut+stime) * time.Second / clkTck
	return p, nil
}

// machine describes this machine: commit, kernel, CPUs, load, etcd.
func machine(ctx context.Context, etcdDir string) string {
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	commit, _ := exec.CommandContext(ctx, "git", "describe", "--always", "--dirty").Output()
	s := fmt.Sprintf("commit %s, kernel %s, %d CPUs", strings.TrimSpace(string(commit)), strings.TrimSpace(string(kernel)), runtime.NumCPU())
	if etcdDir != "" {
		ver, _ := exec.CommandContext(ctx, "etcd", "--version").Output()
		first, _, _ := strings.Cut(string(ver), "\n")
		s += fmt.Sprintf(", etcd %s with its data on %s", strings.TrimSpace(strings.TrimPrefix(first, "etcd Version:")), fsType(etcdDir))
	}
	return s + fmt.Sprintf("; loadavg %s at the start", loadavg())
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	return strings.Join(f[:min(3, len(f))], " ")
}

// fsType names the file system dir is on, for etcd's fsync costs.
func fsType(dir string) string {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "?"
	}
	switch st.Type {
	case unix.TMPFS_MAGIC:
		return "tmpfs"
	case unix.EXT4_SUPER_MAGIC:
		return "ext4"
	case unix.XFS_SUPER_MAGIC:
		return "xfs"
	case unix.BTRFS_SUPER_MAGIC:
		return "btrfs"
	case unix.OVERLAYFS_SUPER_MAGIC:
		return "overlayfs"
	}
	return fmt.Sprintf("fs type %#x", st.Type)
}

func progress(format string, a ...any) { fmt.Fprintf(os.Stderr, "# "+format+"\n", a...) }
