package ipam

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

func hlConf(t *testing.T, dir string) []byte {
	t.Helper()
	return []byte(`{"cniVersion":"1.0.0","name":"hlnet","type":"bridge","ipam":{"type":"host-local",
		"ranges":[[{"subnet":"10.55.0.0/29"}],[{"subnet":"fd55::/120"}]],
		"routes":[{"dst":"0.0.0.0/0"}],"dataDir":"` + dir + `"}}`)
}

// In-process host-local leases as the binary does: one address per range
// set, the lease files in the binary's layout, a second ADD of the same
// attachment refused, requested addresses honoured, nothing left by a
// failed ADD, released by DEL.
func TestHostLocal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := hlConf(t, dir)
	a := Attachment{ContainerID: "ctr-a", IfName: "eth0"}
	res, err := hostLocalAdd(conf, a, false)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.IPs) != 2 || res.IPs[0].Address.String() != "10.55.0.2/29" || res.IPs[1].Address.String() != "fd55::2/120" {
		t.Fatalf("IPs = %v, want 10.55.0.2/29 and fd55::2/120", res.IPs)
	}
	if len(res.Routes) != 1 || res.Routes[0].Dst.String() != "0.0.0.0/0" {
		t.Errorf("routes = %v", res.Routes)
	}
	b, err := os.ReadFile(filepath.Join(dir, "hlnet", "10.55.0.2"))
	if err != nil || !strings.HasPrefix(string(b), "ctr-a") {
		t.Errorf("lease file of 10.55.0.2 = %q, %v; want host-local's layout naming ctr-a", b, err)
	}
	// As the binary: a second ADD of the attachment is refused, and its
	// lease stays.
	if _, err := hostLocalAdd(conf, a, false); err == nil || !strings.Contains(err.Error(), "duplicate") {
		t.Errorf("ADD again = %v, want host-local's duplicate allocation error", err)
	}
	if err := hostLocalCheck(conf, a); err != nil {
		t.Errorf("CHECK: %v", err)
	}

	b1 := Attachment{ContainerID: "ctr-b", IfName: "eth0", Args: "IgnoreUnknown=1;IP=10.55.0.5"}
	if res, err := hostLocalAdd(conf, b1, false); err != nil || res.IPs[0].Address.String() != "10.55.0.5/29" {
		t.Errorf("ADD with IP=10.55.0.5 = %v, %v", res, err)
	}
	bad := Attachment{ContainerID: "ctr-c", IfName: "eth0", Args: "IgnoreUnknown=1;IP=10.66.0.5"}
	if _, err := hostLocalAdd(conf, bad, false); err == nil || !strings.Contains(err.Error(), "10.66.0.5") {
		t.Errorf("ADD with IP=10.66.0.5 (in no range) = %v, want an error naming it", err)
	}
	if err := hostLocalCheck(conf, bad); err == nil {
		t.Error("the failed ADD left a lease")
	}

	if err := hostLocalDel(conf, a); err != nil {
		t.Fatal(err)
	}
	if err := hostLocalCheck(conf, a); err == nil {
		t.Error("CHECK after DEL = nil")
	}
	if _, err := os.Stat(filepath.Join(dir, "hlnet", "10.55.0.2")); !os.IsNotExist(err) {
		t.Errorf("lease file of 10.55.0.2 after DEL: %v", err)
	}
	if err := hostLocalDel(conf, a); err != nil {
		t.Errorf("DEL again: %v", err)
	}
}

// A /29 has 5 usable addresses past the gateway: the sixth ADD fails and
// leaves nothing behind in the other range set.
func TestHostLocalExhausted(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := hlConf(t, dir)
	for i := range 5 {
		if _, err := hostLocalAdd(conf, Attachment{ContainerID: "c" + string(rune('0'+i)), IfName: "eth0"}, i%2 == 0); err != nil {
			t.Fatalf("ADD %d: %v", i, err)
		}
	}
	last := Attachment{ContainerID: "c9", IfName: "eth0"}
	if _, err := hostLocalAdd(conf, last, true); err == nil {
		t.Fatal("ADD past the range's end succeeded")
	}
	if err := hostLocalCheck(conf, last); err == nil {
		t.Error("the failed ADD left its v6 lease")
	}
}

func TestParseResolvConf(t *testing.T) {
	dns := parseResolvConf("# c\nnameserver 10.0.0.1\n; x\nnameserver 10.0.0.2\ndomain example.org\nsearch a.example b.example\noptions ndots:2 rotate\nbogus\n")
	if strings.Join(dns.Nameservers, ",") != "10.0.0.1,10.0.0.2" || dns.Domain != "example.org" ||
		strings.Join(dns.Search, ",") != "a.example,b.example" || strings.Join(dns.Options, ",") != "ndots:2,rotate" {
		t.Errorf("parsed %+v", dns)
	}
}

func FuzzParseResolvConf(f *testing.F) {
	f.Add("nameserver 10.0.0.1\nsearch a b\noptions x\ndomain d\n")
	f.Fuzz(func(t *testing.T, s string) {
		dns := parseResolvConf(s)
		for _, n := range dns.Nameservers {
			if n == "" || strings.ContainsAny(n, " \t\n") {
				t.Fatalf("nameserver %q from %q", n, s)
			}
		}
	})
}

// Release by recorded addresses frees exactly the holder's leases: a
// listed address another container holds stays.
func TestHostLocalRelease(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	conf := hlConf(t, dir)
	a := Attachment{ContainerID: "ctr-a", IfName: "eth0"}
	b := Attachment{ContainerID: "ctr-b", IfName: "eth0"}
	ra, err := hostLocalAdd(conf, a, true)
	if err != nil {
		t.Fatal(err)
	}
	rb, err := hostLocalAdd(conf, b, true)
	if err != nil {
		t.Fatal(err)
	}
	var addrs []netip.Addr
	for _, ip := range append(ra.IPs, rb.IPs[0]) { // b's v4 listed by mistake
		p, _ := netip.AddrFromSlice(ip.Address.IP)
		addrs = append(addrs, p.Unmap())
	}
	if err := hostLocalRelease(conf, a, addrs); err != nil {
		t.Fatal(err)
	}
	if err := hostLocalCheck(conf, a); err == nil {
		t.Error("a still holds a lease after its release")
	}
	if err := hostLocalCheck(conf, b); err != nil {
		t.Errorf("b lost its lease to a's release: %v", err)
	}
	if err := hostLocalRelease(conf, a, addrs); err != nil {
		t.Errorf("release again: %v", err)
	}
}

// hostLocalAdd is an in-process host-local ADD in one call.
func hostLocalAdd(netconf []byte, a Attachment, fresh bool) (*current.Result, error) {
	l, err := prepareHostLocal(netconf, a)
	if err != nil {
		return nil, err
	}
	return l.take(fresh)
}
