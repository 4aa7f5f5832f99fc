package esp

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/berth-cni/berth/pkg/netns"
)

// XfrmStats reads the xfrm error counters of ns (XfrmInNoStates,
// XfrmOutNoStates, XfrmInStateProtoError, …), the kernel's count of what
// its SAs and policies refused.
//
// Equivalent: ip netns exec $ns cat /proc/net/xfrm_stat
func XfrmStats(ns *netns.NS) (map[string]uint64, error) {
	var b []byte
	err := ns.Do(func() error {
		var err error
		b, err = os.ReadFile("/proc/thread-self/net/xfrm_stat")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("read xfrm_stat of %s: %w", ns, err)
	}
	return ParseXfrmStat(b)
}

// ParseXfrmStat parses /proc/net/xfrm_stat: one "Name<space>value" per
// line.
func ParseXfrmStat(b []byte) (map[string]uint64, error) {
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		if len(f) != 2 || !strings.HasPrefix(f[0], "Xfrm") {
			return nil, fmt.Errorf("xfrm_stat line %d: %q: want a counter name and a value", n, line)
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("xfrm_stat line %d: %q: %w", n, line, err)
		}
		out[f[0]] = v
	}
	return out, sc.Err()
}
