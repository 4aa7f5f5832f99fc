// Package deps holds the test that keeps berth's pure packages pure: the
// parsing, validation and planning packages import no netlink, nftables,
// process or cluster-store code, so that they stay plain functions over
// plain values, testable without root (DESIGN.md, "Pure packages are
// pure").
package deps

import (
	"os/exec"
	"strings"
	"testing"
)

// pure are the packages that must stay pure.
var pure = []string{
	"github.com/berth-cni/berth/pkg/cidr",
	"github.com/berth-cni/berth/pkg/cnierr",
	"github.com/berth-cni/berth/pkg/config",
	"github.com/berth-cni/berth/pkg/hostport/portplan",
	"github.com/berth-cni/berth/pkg/iptables",
	"github.com/berth-cni/berth/pkg/nat/natplan",
	"github.com/berth-cni/berth/pkg/overlay/ack",
	"github.com/berth-cni/berth/pkg/overlay/espplan",
	"github.com/berth-cni/berth/pkg/overlay/peerplan",
	"github.com/berth-cni/berth/pkg/overlay/store",
	"github.com/berth-cni/berth/pkg/owner",
	"github.com/berth-cni/berth/pkg/plan",
	"github.com/berth-cni/berth/pkg/undo",
}

// kernel are the import paths (or their prefixes) a pure package must not
// reach: kernel interfaces, programs, the cluster store's client.
var kernel = []string{
	"github.com/vishvananda/netlink",
	"github.com/vishvananda/netns",
	"github.com/google/nftables",
	"github.com/mdlayher/netlink",
	"github.com/containernetworking/plugins/pkg/ns",
	"go.etcd.io/etcd",
	"google.golang.org/grpc",
	"os/exec",
	"sigs.k8s.io/knftables",
}

func TestPurePackagesImportNoKernelCode(t *testing.T) {
	for _, p := range pure {
		t.Run(p[strings.LastIndex(p, "/pkg/")+5:], func(t *testing.T) {
			t.Parallel()
			out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", p).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps %s: %v\n%s", p, err, out)
			}
			for _, dep := range strings.Fields(string(out)) {
				for _, k := range kernel {
					if dep == k || strings.HasPrefix(dep, k+"/") {
						t.Errorf("%s depends on %s", p, dep)
					}
				}
			}
		})
	}
}
