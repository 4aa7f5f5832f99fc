package hostport

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport/portplan"
	"github.com/berth-cni/berth/pkg/iptables"
)

// iptFlavours are the iptables programs to run the root tests with: the
// host's default iptables, and the legacy one when installed. Without the
// default ones the test is skipped, stating why (a failure under CI).
func iptFlavours(t *testing.T) map[string]iptables.Commands {
	t.Helper()
	lab.RequireRoot(t)
	out := map[string]iptables.Commands{}
	for name, cmds := range map[string]iptables.Commands{"default": iptables.Default, "legacy": iptables.Legacy} {
		if installed(cmds) {
			out[name] = cmds
		}
	}
	requireTool(t, out["default"] != iptables.Commands{}, "iptables-restore and iptables-save (both families) are not installed: the iptables backend cannot run here")
	return out
}

// iptSave is both families' nat tables in n.
func iptSave(t *testing.T, n *lab.NS, cmds iptables.Commands) string {
	t.Helper()
	var b strings.Builder
	for _, c := range []string{cmds.Save4, cmds.Save6} {
		out, err := n.Output(context.Background(), c, "-t", "nat")
		if err != nil {
			t.Fatalf("%s: %v", c, err)
		}
		b.Write(out)
	}
	return b.String()
}

// addThenCheck adds each of as in order, then checks each.
func addThenCheck(d *IPTables, as ...Attachment) error {
	for _, a := range as {
		if err := d.Add(a); err != nil {
			return fmt.Errorf("Add %s: %w", a.Owner.ContainerID, err)
		}
	}
	for _, a := range as {
		if err := d.Check(a); err != nil {
			return fmt.Errorf("Check %s: %w", a.Owner.ContainerID, err)
		}
	}
	return nil
}

// Add, Add again, Check, Remove, Remove again on the real tools: the
// kernel takes the payloads, iptables-save prints the rules as berth wrote
// them (so Check passes and a retry keeps the jump), Remove takes exactly
// one attachment, and Check then names what is missing.
func TestIPTAddCheckRemove(t *testing.T) {
	for name, cmds := range iptFlavours(t) {
		t.Run(name, func(t *testing.T) {
			l, n := testNS(t)
			a := iptAttachment("c1", mapping("tcp", "", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353), mapping("tcp", "::", 8443, 443))
			a.Owner.IfName = `e"t\h'0` // a legal interface name: the comment must survive it
			b := iptAttachment("c2", mapping("sctp", "", 9090, 90))
			b.MasqAll = true
			d := NewIPTables(n, nil, cmds)
			if err := addThenCheck(d, a, b, a); err != nil {
				t.Fatal(err)
			}
			dump := iptSave(t, l, cmds)
			t.Log(dump)
			ch := portplan.IPTChain(a.Owner)
			for _, want := range []string{
				"-A PREROUTING -m addrtype --dst-type LOCAL -m comment --comment \"berth portmap\" -j BERTH-HOSTPORTS",
				"-A OUTPUT -m addrtype --dst-type LOCAL -m comment --comment \"berth portmap\" -j BERTH-HOSTPORTS",
				"-A POSTROUTING -m comment --comment \"berth portmap\" -j BERTH-HP-MASQ",
				"-A " + ch + " -d 10.0.0.1/32 -p udp -m udp --dport 53 -j DNAT --to-destination 10.88.0.5:5353",
				"-A " + ch + " -p tcp -m tcp --dport 8443 -j DNAT --to-destination [fd00:88::5]:443",
				"-A " + ch + " -s 127.0.0.0/8 -p tcp -m tcp --dport 8080 -j MARK --set-xmark 0x2000/0x2000",
				`--comment "berth id=c1 if=e\"t\\h\'0 net=n1" -j ` + ch,
				"-A " + portplan.IPTChain(b.Owner) + " -p sctp -m sctp --dport 9090 -j MARK --set-xmark 0x2000/0x2000",
			} {
				if !strings.Contains(dump, want) {
					t.Errorf("iptables-save lacks %q", want)
				}
			}
			if c := strings.Count(dump, "-j "+ch); c != 2 {
				t.Errorf("%d jumps to %s after two Adds, want one per family", c, ch)
			}
			if c := strings.Count(dump, "-j BERTH-HOSTPORTS"); c != 4 {
				t.Errorf("%d jumps to BERTH-HOSTPORTS, want PREROUTING and OUTPUT once per family", c)
			}
			err := func() error {
				if err := d.Remove(a); err != nil {
					return err
				}
				if err := d.Remove(a); err != nil {
					return err
				}
				if err := d.Check(b); err != nil {
					return err
				}
				if err := d.Check(a); err == nil || !strings.Contains(err.Error(), ch) || !strings.Contains(err.Error(), "container c1") {
					t.Errorf("Check after Remove = %v, want the missing %s of c1", err, ch)
				}
				return nil
			}()
			if err != nil {
				t.Fatal(err)
			}
			if dump := iptSave(t, l, cmds); strings.Contains(dump, "id=c1") || strings.Contains(dump, ch) || !strings.Contains(dump, "id=c2") {
				t.Errorf("after Remove(c1):\n%s", dump)
			}
		})
	}
}

// The config's options on the real tools: conditions (quoted, per family),
// markMasqBit, and externalSetMarkChain jumping to a chain kube-proxy
// would have made. A Remove without the config clears each.
func TestIPTOptions(t *testing.T) {
	cmds := iptFlavours(t)["default"]
	l, n := testNS(t)
	c4 := []string{"!", "-s", "192.0.2.0/24", "-m", "comment", "--comment", `user's "cond"`}
	c6 := []string{"!", "-i", "eth9"}
	bit, kube := 14, "KUBE-MARK-MASQ"
	for _, tc := range []struct {
		name string
		conf *config.Portmap
		want []string
	}{
		{"conditions", &config.Portmap{ConditionsV4: &c4, ConditionsV6: &c6}, []string{
			// iptables-save prints -p before the matches, and the
			// owner's comment last, where Check reads it.
			`-A BERTH-HOSTPORTS ! -s 192.0.2.0/24 -p tcp -m comment --comment "user\'s \"cond\"" -m multiport --dports 7070 -m comment --comment "berth id=opt-conditions`,
			"-A BERTH-HOSTPORTS ! -i eth9 -p tcp -m multiport --dports 7070",
		}},
		{"markMasqBit", &config.Portmap{MarkMasqBit: &bit}, []string{
			"-p tcp -m tcp --dport 7070 -j MARK --set-xmark 0x4000/0x4000",
			"-A BERTH-HP-MASQ -m mark --mark 0x4000/0x4000 -m comment --comment \"berth portmap\" -j MASQUERADE",
		}},
		{"externalSetMarkChain", &config.Portmap{ExternalSetMarkChain: &kube}, []string{
			"-s 10.88.0.0/16 -p tcp -m tcp --dport 7070 -j KUBE-MARK-MASQ",
			"-s fd00:88::/64 -p tcp -m tcp --dport 7070 -j KUBE-MARK-MASQ",
		}},
	} {
		a := iptAttachment("opt-"+tc.name, mapping("tcp", "", 7070, 70))
		d := NewIPTables(n, tc.conf, cmds)
		err := func() error {
			if tc.conf.ExternalSetMarkChain != nil {
				for _, r := range []string{cmds.Restore4, cmds.Restore6} {
					if _, err := n.Run("*nat\n:KUBE-MARK-MASQ - [0:0]\n-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\nCOMMIT\n", r, "--noflush", "-w"); err != nil {
						return err
					}
				}
			}
			return addThenCheck(d, a, a)
		}()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		dump := iptSave(t, l, cmds)
		for _, w := range tc.want {
			if !strings.Contains(dump, w) {
				t.Errorf("%s: iptables-save lacks %q:\n%s", tc.name, w, dump)
			}
		}
		if c := strings.Count(dump, "-j "+portplan.IPTChain(a.Owner)); c != 2 {
			t.Errorf("%s: %d jumps to the chain after two Adds, want one per family", tc.name, c)
		}
		if err := NewIPTables(n, nil, cmds).Remove(a); err != nil {
			t.Fatalf("%s: Remove: %v", tc.name, err)
		}
		if dump := iptSave(t, l, cmds); strings.Contains(dump, a.Owner.ContainerID) || strings.Contains(dump, portplan.IPTChain(a.Owner)) {
			t.Errorf("%s: left after Remove:\n%s", tc.name, dump)
		}
	}
}

// installed reports whether all of cmds' programs are on PATH.
func installed(cmds iptables.Commands) bool {
	for _, p := range cmds.Programs() {
		if _, err := exec.LookPath(p); err != nil {
			return false
		}
	}
	return true
}
