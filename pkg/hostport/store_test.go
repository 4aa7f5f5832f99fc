package hostport

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/hostport/portplan"
	"github.com/berth-cni/berth/pkg/owner"
)

func claimOK(t *testing.T, s Store, a Attachment) {
	t.Helper()
	if err := s.Conflict(a); err != nil {
		t.Fatalf("Conflict(%s): %v", a.Owner.ContainerID, err)
	}
	if err := s.Claim(a); err != nil {
		t.Fatal(err)
	}
}

func TestStoreOneOwner(t *testing.T) {
	s := Open(t.TempDir())
	a := testAttachment("a", "10.88.0.5/16", "", mapping("tcp", "", 8080, 80), mapping("udp", "", 53, 53))
	claimOK(t, s, a)

	b := testAttachment("b", "10.88.0.6/16", "", mapping("tcp", "10.0.0.1", 8080, 80))
	err := s.Conflict(b)
	var held *HeldError
	if !errors.As(err, &held) || cnierr.Code(err) != cnierr.CodePortHeld {
		t.Fatalf("Conflict = %v, want a HeldError with code 101", err)
	}
	for _, want := range []string{"tcp 10.0.0.1:8080", "container a ", `network "n1"`, "interface eth0", "10.88.0.5:80", "tcp *:8080"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message lacks %q: %v", want, err)
		}
	}
	// The holder retrying (same owner) is no conflict; the union is held.
	a2 := testAttachment("a", "10.88.0.5/16", "", mapping("tcp", "", 8080, 80), mapping("tcp", "", 9090, 90))
	claimOK(t, s, a2)
	got, found, err := s.Held(a.Owner)
	if err != nil || !found || len(got.Mappings) != 3 {
		t.Fatalf("Held after a retry = %v %v %v, want the union of 3 mappings", got, found, err)
	}
	// Another owner's Release frees nothing of a's.
	if err := s.Release(testAttachment("b", "", "", mapping("tcp", "", 8080, 80))); err != nil {
		t.Fatal(err)
	}
	if err := s.Conflict(b); err == nil {
		t.Fatal("b's release freed a's port")
	}
	// Revert of the retry leaves what a held before it.
	if err := s.Revert(a, got); err != nil {
		t.Fatal(err)
	}
	if err := s.Conflict(testAttachment("c", "", "", mapping("tcp", "", 9090, 90))); err != nil {
		t.Errorf("after Revert, 9090 is still held: %v", err)
	}
	cs, err := s.Claims()
	if err != nil || len(cs) != 2 {
		t.Fatalf("Claims = %v %v, want a's 2", cs, err)
	}
	if err := s.Release(a); err != nil {
		t.Fatal(err)
	}
	claimOK(t, s, b)
	if hs, _ := s.Holders(); len(hs) != 1 || hs[0].Owner.ContainerID != "b" {
		t.Errorf("Holders = %v, want b alone", hs)
	}
	if ents, _ := os.ReadDir(filepath.Join(s.Dir(), "ports")); len(ents) != 1 {
		t.Errorf("ports dirs = %v, want tcp-8080 alone (udp-53 freed with its last claim)", ents)
	}
}

// A claim file left by a killed plugin, with no index naming it, still
// blocks others (never two owners) and is named in the message.
func TestStoreClaimWithoutIndex(t *testing.T) {
	s := Open(t.TempDir())
	a := testAttachment("a", "10.88.0.5/16", "", mapping("tcp", "", 8080, 80))
	claimOK(t, s, a)
	os.Remove(s.ownerPath(a.Owner))
	if err := s.Conflict(testAttachment("b", "10.88.0.6/16", "", mapping("tcp", "", 8080, 80))); err == nil {
		t.Error("an orphan claim did not block another owner")
	}
}

// The files under the data directory are an API: `berth ports`, a DEL by
// a newer release and people read them. The index's name (24 hex digits
// of the owner's hash) and both files' bytes must not change.
func TestStoreFilesAreAnAPI(t *testing.T) {
	t.Parallel()
	s := Open(t.TempDir())
	a := testAttachment("c1", "10.88.0.5/16", "fd00:88::5/64", mapping("tcp", "", 8080, 80), mapping("udp", "10.0.0.1", 53, 5353))
	if err := s.Claim(a); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]string{
		"owners/836d7657cb16b8dc504ee410.json": `{"Owner":{"Network":"n1","ContainerID":"c1","IfName":"eth0"},"Mappings":[{"Proto":"tcp","Addr":"","Port":8080,"ContainerPort":80},{"Proto":"udp","Addr":"10.0.0.1","Port":53,"ContainerPort":5353}],"Targets":["10.88.0.5/16","fd00:88::5/64"],"SNAT":true,"MasqAll":false,"Backend":"nftables"}`,
		"ports/tcp-8080/any":                   `{"protocol":"tcp","hostIP":"","hostPort":8080,"network":"n1","containerID":"c1","ifName":"eth0","containerIPs":["10.88.0.5/16","fd00:88::5/64"],"containerPort":80}`,
		"ports/udp-53/10.0.0.1":                `{"protocol":"udp","hostIP":"10.0.0.1","hostPort":53,"network":"n1","containerID":"c1","ifName":"eth0","containerIPs":["10.88.0.5/16"],"containerPort":5353}`,
	} {
		b, err := os.ReadFile(filepath.Join(s.Dir(), path))
		if err != nil {
			t.Errorf("%s: %v", path, err)
			continue
		}
		if string(b) != want {
			t.Errorf("%s:\n%s\nwant:\n%s", path, b, want)
		}
	}
}

// The two names hostport derives from an owner are an API: the iptables
// chain and the index file under owners/. Both are the owner's hash, 12
// and 24 hex digits of SHA-256(network NUL containerID NUL ifName), as
// they were before pkg/owner.
func TestOwnerNames(t *testing.T) {
	t.Parallel()
	o := owner.Owner{Network: "n1", ContainerID: "c1", IfName: "eth0"}
	sum := sha256.Sum256([]byte("n1\x00c1\x00eth0"))
	if got, want := portplan.IPTChain(o), "BERTH-DN-836d7657cb16"; got != want || want != "BERTH-DN-"+hex.EncodeToString(sum[:6]) {
		t.Errorf("IPTChain = %q, want %q", got, want)
	}
	if got, want := filepath.Base(Open("/x").ownerPath(o)), "836d7657cb16b8dc504ee410.json"; got != want || want != hex.EncodeToString(sum[:12])+".json" {
		t.Errorf("index file = %q, want %q", got, want)
	}
}
