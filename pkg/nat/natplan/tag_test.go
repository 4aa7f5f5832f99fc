package natplan

import (
	"strings"
	"testing"

	"github.com/berth-cni/berth/pkg/owner"
)

const id64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestTagString(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		tag  Tag
		want string
	}{
		{Tag{Bits: 16, IfName: "eth0", ContainerID: id64}, "berth p=16 if=eth0 id=" + id64},
		{Tag{Network: "mynet", Bits: 24, IfName: "net1", ContainerID: "c1"}, "berth net=mynet p=24 if=net1 id=c1"},
		{Tag{Network: "mynet", Family: "ip6", Bits: -1}, "berth net=mynet fam=ip6"},
		{Tag{Network: "mynet", Bits: -1}, "berth net=mynet"},
		{Tag{Bits: 0, IfName: "a b", ContainerID: `x"\%`}, "berth p=0 if=a%20b id=x%22%5C%25"},
	} {
		if got := tc.tag.String(); got != tc.want {
			t.Errorf("%+v.String() = %q, want %q", tc.tag, got, tc.want)
		}
		back, err := ParseTag(tc.want)
		if err != nil || back != tc.tag {
			t.Errorf("parseTag(%q) = %+v, %v; want %+v", tc.want, back, err, tc.tag)
		}
	}
}

func TestParseTagRejects(t *testing.T) {
	t.Parallel()
	for _, s := range []string{
		"",
		"berthx p=1",
		"other p=1 if=e id=c",
		"berth  p=1",                // empty field
		"berth p=1 ",                // trailing space
		"berth p",                   // no value
		"berth =1",                  // no key
		"berth p=",                  // empty value
		"berth p=1 p=2",             // repeated key
		"berth p=129",               // too long a prefix
		"berth p=-1",                // negative
		"berth p=016",               // two spellings of 16
		"berth p=+16",               // two spellings of 16
		"berth fam=inet",            // unknown family
		"berth if=0123456789abcdef", // 16 bytes
		"berth id=a%2",              // short escape
		"berth id=a%zz",             // not hex
		"berth id=a%41",             // escapes a plain byte
		"berth id=a%2f",             // lower-case hex
		"berth id=a/b",              // raw byte escape would have escaped
		"berth id=a\x00",            // NUL
	} {
		if tg, err := ParseTag(s); err == nil {
			t.Errorf("parseTag(%q) = %+v, want an error", s, tg)
		}
	}
	// Unknown keys are skipped: a newer berth may add some.
	tg, err := ParseTag("berth p=8 new=x if=e id=c")
	if err != nil || !tg.HasOwner() || tg.Bits != 8 {
		t.Errorf("parseTag with an unknown key = %+v, %v", tg, err)
	}
}

func TestShorten(t *testing.T) {
	t.Parallel()
	if got := shorten(id64, maxStoredID); got != id64 {
		t.Errorf("a 64-byte id was shortened to %q", got)
	}
	long := strings.Repeat("a", 256)
	s := shorten(long, maxStoredID)
	if len(s) != maxStoredID || !strings.HasPrefix(s, strings.Repeat("a", 47)+"~") {
		t.Errorf("shorten(256 a) = %q (%d bytes)", s, len(s))
	}
	if again := shorten(s, maxStoredID); again != s {
		t.Errorf("shorten is not idempotent: %q then %q", s, again)
	}
	if other := shorten(long+"b", maxStoredID); other == s {
		t.Errorf("two ids shortened to the same %q", s)
	}
	// Escaped bytes count thrice.
	odd := strings.Repeat("/", 30)
	if so := shorten(odd, maxStoredID); len(escape(so)) > maxStoredID {
		t.Errorf("shorten(%q) = %q, escaped %d bytes", odd, so, len(escape(so)))
	}
	o := owner.Owner{Network: "n", ContainerID: long, IfName: "eth0"}
	if got := StoredOwner(o); got.ContainerID != s || got.Network != "n" || got.IfName != "eth0" {
		t.Errorf("StoredOwner = %+v", got)
	}
	if StoredOwner(StoredOwner(o)) != StoredOwner(o) {
		t.Error("StoredOwner is not idempotent")
	}
}

// TestCommentLimits keeps every comment within what nft reads back (128
// bytes) and what xt_comment holds (255), for the longest valid inputs.
func TestCommentLimits(t *testing.T) {
	t.Parallel()
	net := strings.Repeat("n", 128)
	e := Entry{Owner: StoredOwner(owner.Owner{ContainerID: strings.Repeat("c", 256), IfName: strings.Repeat("%", 15)}),
		Addr: mustPrefix("fd00::1/128")}
	if s := OwnerTag("", e).String(); len(s) > 128 {
		t.Errorf("element comment is %d bytes: %q", len(s), s)
	}
	if s := NetworkTag(net, "ip6").String(); len(s) > 128 {
		t.Errorf("rule comment is %d bytes: %q", len(s), s)
	}
	if s := OwnerTag(net, e).String(); len(s) > 255 {
		t.Errorf("iptables comment is %d bytes: %q", len(s), s)
	}
}

// TestNames pins the kernel names: they are an API once released.
func TestNames(t *testing.T) {
	t.Parallel()
	if got := netHash("mynet"); got != "11c844f95e286212" {
		t.Errorf("netHash(mynet) = %s", got)
	}
	n := NFTNamesFor("mynet")
	if n.Src[V4] != "src4-11c844f95e286212" || n.Dst[V6] != "dst6-11c844f95e286212" {
		t.Errorf("namesFor(mynet) = %+v", n)
	}
	if got := iptChain("mynet"); got != "BERTH-MASQ-11c844f95e286212" || len(got) > 28 {
		t.Errorf("iptChain(mynet) = %s", got)
	}
}

func FuzzParseTag(f *testing.F) {
	for _, s := range []string{"berth p=16 if=eth0 id=" + id64, "berth net=a fam=ip", "berth id=%20", "berth x=1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tg, err := ParseTag(s)
		if err != nil {
			return
		}
		again, err := ParseTag(tg.String())
		if err != nil || again != tg {
			t.Fatalf("parseTag(%q) = %+v, but its String %q parses to %+v, %v", s, tg, tg.String(), again, err)
		}
		if u, err := unescape(escape(s)); err != nil || u != s {
			t.Fatalf("unescape(escape(%q)) = %q, %v", s, u, err)
		}
	})
}
