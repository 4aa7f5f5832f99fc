package hostport

import (
	"context"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	"github.com/berth-cni/berth/internal/lab"
)

var elemComment = regexp.MustCompile(` comment "berth id=[^"]*"`)

// nftList is `nft list table inet berth-portmap` in n, or "" without nft.
func nftList(t *testing.T, n *lab.NS) string {
	t.Helper()
	if _, err := exec.LookPath("nft"); err != nil {
		return ""
	}
	out, _ := n.Output(context.Background(), "nft", "list", "table", "inet", NFTTable)
	// Element comments sit between key and value: drop them.
	return elemComment.ReplaceAllString(string(out), "")
}

// The table the first Add creates is what the kernel and nft accept, and
// lists as the design says; Check finds each element; Remove takes exactly
// one attachment's elements; a second Remove is not an error.
func TestNFTAddCheckRemove(t *testing.T) {
	l, n := testNS(t)
	a := testAttachment("c1", "10.88.0.5/16", "fd00:88::5/64",
		mapping("tcp", "", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353), mapping("tcp", "::", 8443, 443))
	a.MasqAll = true
	b := testAttachment("c2", "10.88.0.6/16", "", mapping("tcp", "", 9090, 90))
	d := NewNFT(n)
	err := func() error {
		if err := d.Add(a); err != nil {
			return err
		}
		if err := d.Add(b); err != nil {
			return err
		}
		if err := d.Add(a); err != nil { // a retry changes nothing
			return err
		}
		return d.Check(a)
	}()
	if err != nil {
		t.Fatal(err)
	}
	list := nftList(t, l)
	t.Log(list)
	for _, want := range []string{
		"tcp . 8080 : 10.88.0.5 . 80", "tcp . 9090 : 10.88.0.6 . 90",
		"10.0.0.1 . udp . 53 : 10.88.0.5 . 5353",
		"tcp . 8080 : fd00:88::5 . 80", "tcp . 8443 : fd00:88::5 . 443",
		"10.88.0.0/16 . 10.88.0.5", "127.0.0.0/8 . 10.88.0.5",
		"dnat ip to ip daddr . meta l4proto . th dport map @addr4",
		"dnat ip6 to meta l4proto . th dport map @any6",
		"fib daddr type local jump hostports",
		"ct status dnat ip saddr . ip daddr @hairpin4 masquerade",
	} {
		if list != "" && !strings.Contains(list, want) {
			t.Errorf("nft list lacks %q", want)
		}
	}
	err = func() error {
		if err := d.Remove(a); err != nil {
			return err
		}
		if err := d.Remove(a); err != nil {
			return err
		}
		if err := d.Check(b); err != nil {
			return err
		}
		if err := d.Check(a); err == nil || !strings.Contains(err.Error(), "tcp . 8080") {
			t.Errorf("Check after Remove = %v, want a missing tcp . 8080", err)
		}
		return nil
	}()
	if err != nil {
		t.Fatal(err)
	}
	if list := nftList(t, l); list != "" && (strings.Contains(list, "10.88.0.5") || !strings.Contains(list, "10.88.0.6")) {
		t.Errorf("after Remove(a):\n%s", list)
	}
}
