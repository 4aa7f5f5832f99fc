package hostport

import (
	"context"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"

	"github.com/berth-cni/berth/pkg/hostport/portplan"
	"github.com/berth-cni/berth/pkg/netns"
)

// kernelConn is the nftables datapath's connection to n's kernel, read and
// written over netlink as the datapath does.
func kernelConn(t *testing.T, n *netns.NS) nftConn {
	t.Helper()
	c, err := n.NFT()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.CloseLasting() })
	return kernelNFT{c}
}

// The scenarios of TestNFTScenarios on the kernel, each in a namespace of
// its own: the transcript and the table (read back over netlink) are the
// fake's golden text. This pins the fake to the kernel: the errnos it
// answers, what a transaction that fails leaves (nothing), what a re-add
// keeps.
func TestNFTScenariosKernel(t *testing.T) {
	for _, sc := range nftScenarios(t) {
		t.Run(sc.name, func(t *testing.T) {
			_, n := testNS(t)
			golden(t, sc.name, sc.run(t, kernelConn(t, n)), false)
		})
	}
}

// The table the first Add creates is what nft reads as the design says
// (portplan.NFTTable's picture), and each element lists as its String
// says.
func TestNFTTableAsNFTListsIt(t *testing.T) {
	l, n := testNS(t)
	_, err := exec.LookPath("nft")
	requireTool(t, err == nil, "needs the nft binary to read the table as a person does (Debian: apt-get install nftables)")
	a := testAttachment("c1", "10.88.0.5/16", "fd00:88::5/64",
		mapping("tcp", "", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353), mapping("tcp", "::", 8443, 443))
	a.MasqAll = true
	if err := NewNFT(n).Add(a); err != nil {
		t.Fatal(err)
	}
	out, err := l.Output(context.Background(), "nft", "list", "table", "inet", portplan.NFTTable)
	if err != nil {
		t.Fatalf("nft list table: %v", err)
	}
	list := string(out)
	t.Log(list)
	var want []string
	for _, e := range portplan.PlanNFT(a) {
		// "add element inet berth-portmap any4 { X }" lists as X.
		s := e.String()
		want = append(want, s[strings.Index(s, "{ ")+2:len(s)-2])
	}
	want = append(want,
		"dnat ip to ip daddr . meta l4proto . th dport map @addr4",
		"meta nfproto ipv4 dnat ip to meta l4proto . th dport map @any4",
		"dnat ip6 to ip6 daddr . meta l4proto . th dport map @addr6",
		"meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @any6",
		"type nat hook prerouting priority dstnat; policy accept;",
		"fib daddr type local jump hostports",
		"ct status dnat ip saddr . ip daddr @hairpin4 masquerade",
		"ct status dnat ip daddr . meta l4proto . th dport @masqall4 masquerade",
		"ct status dnat ip6 saddr . ip6 daddr @hairpin6 masquerade",
		"ct status dnat ip6 daddr . meta l4proto . th dport @masqall6 masquerade",
	)
	for _, w := range want {
		if !strings.Contains(list, w) {
			t.Errorf("nft list lacks %q", w)
		}
	}
}

// The chains and rules the first Add creates, read back over netlink: the
// four chains with their hooks, and each rule with its comment.
func TestNFTTableLayout(t *testing.T) {
	_, n := testNS(t)
	if err := NewNFT(n).Add(nftC1); err != nil {
		t.Fatal(err)
	}
	c, err := n.NFT()
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseLasting()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, ch := range chains {
		if ch.Table.Name != portplan.NFTTable {
			continue
		}
		rules, err := c.GetRules(pmTable, ch)
		if err != nil {
			t.Fatal(err)
		}
		line := ch.Name
		if ch.Hooknum != nil {
			line += " (hook)"
		}
		for _, r := range rules {
			cm, _ := userdata.GetString(r.UserData, userdata.TypeComment)
			line += " [" + cm + "]"
		}
		got = append(got, line)
	}
	want := []string{
		"hostports [berth dnat addr4] [berth dnat any4] [berth dnat addr6] [berth dnat any6]",
		"prerouting (hook) []",
		"output (hook) []",
		"postrouting (hook) [berth masquerade hairpin4] [berth masquerade masqall4] [berth masquerade hairpin6] [berth masquerade masqall6]",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("chains and rules:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
