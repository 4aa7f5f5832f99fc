package esp

import (
	"os"
	"strings"
	"testing"
)

func TestParseXfrmStat(t *testing.T) {
	got, err := ParseXfrmStat([]byte("XfrmInError             \t0\nXfrmInNoStates          \t17\n\nXfrmOutPolBlock         \t3\n"))
	if err != nil || len(got) != 3 || got["XfrmInNoStates"] != 17 || got["XfrmOutPolBlock"] != 3 {
		t.Fatalf("ParseXfrmStat = %v, %v", got, err)
	}
	for _, bad := range []string{"XfrmInError\n", "XfrmInError x\n", "Foo 1\n", "XfrmInError 1 2\n"} {
		if _, err := ParseXfrmStat([]byte(bad)); err == nil {
			t.Errorf("ParseXfrmStat(%q) took it", bad)
		}
	}
	// This machine's own file parses (reading it changes nothing).
	if b, err := os.ReadFile("/proc/net/xfrm_stat"); err == nil {
		m, err := ParseXfrmStat(b)
		if err != nil || len(m) < 10 {
			t.Fatalf("/proc/net/xfrm_stat: %d counters, %v", len(m), err)
		}
	}
}

func FuzzParseXfrmStat(f *testing.F) {
	f.Add([]byte("XfrmInError\t0\nXfrmOutNoStates 4\n"))
	f.Add([]byte("XfrmInError 18446744073709551615\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseXfrmStat(b)
		if err != nil {
			return
		}
		for k := range m {
			if !strings.HasPrefix(k, "Xfrm") || strings.ContainsAny(k, " \t\n") {
				t.Fatalf("counter name %q", k)
			}
		}
	})
}
