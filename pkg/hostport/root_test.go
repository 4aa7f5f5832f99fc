package hostport

import (
	"context"
	"os"
	"testing"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/netns"
)

// testNS makes a throwaway "host" namespace (as root) and opens it, for
// the datapath and probes to act in; both go in t.Cleanup.
func testNS(t *testing.T) (*lab.NS, *netns.NS) {
	t.Helper()
	lab.RequireRoot(t)
	l, err := lab.NewNS(context.Background(), "bhp-"+lab.RandomSuffix(6))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Delete(); err != nil {
			t.Error(err)
		}
	})
	n, err := netns.Open(l.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { n.Close() })
	return l, n
}

// requireTool skips t, stating why, when a program the test needs is not
// installed, unless the environment variable CI is set: there the skip
// would hide the test, so it fails (as lab.RequireRoot does).
func requireTool(t *testing.T, ok bool, why string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal(why + " (CI is set, so a skip would hide the test)")
	}
	t.Skip(why)
}
