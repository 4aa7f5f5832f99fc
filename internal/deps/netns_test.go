package deps

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// A vishvananda/netlink handle runs a request of a netlink family it has
// no socket for on a new socket in the calling thread's namespace: an xfrm
// or conntrack call on netns.NS.Netlink() (a NETLINK_ROUTE handle) acts
// on the namespace the process runs in, not the one the code names, and
// so does one of the package's own functions. It happened once (an xfrm
// policy meant for a test namespace went into the machine's own): no code
// makes the first; only tests make the second, inside a namespace's Do.
var (
	wrongHandle  = regexp.MustCompile(`Netlink\(\)\.(Xfrm|Conntrack)\w*\(`)
	packageLevel = regexp.MustCompile(`\bnetlink\.(Xfrm|Conntrack)\w*\(`)
)

func TestNoNetlinkCallOutsideItsNamespace(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "out" || strings.HasPrefix(d.Name(), ".")) && path != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "netns_test.go") && strings.Contains(path, "internal/deps") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		n++
		for i, line := range strings.Split(string(b), "\n") {
			if wrongHandle.MatchString(line) || packageLevel.MatchString(line) && !strings.HasSuffix(path, "_test.go") {
				rel, _ := filepath.Rel(root, path)
				t.Errorf("%s:%d: %s: use netns.NS.Xfrm or NetlinkFamily", rel, i+1, strings.TrimSpace(line))
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 100 {
		t.Fatalf("scanned %d Go files: the walk missed the tree", n)
	}
}
