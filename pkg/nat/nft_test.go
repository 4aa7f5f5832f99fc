package nat

import (
	"testing"

	"github.com/google/nftables/userdata"
)

func TestRuleComment(t *testing.T) {
	t.Parallel()
	ud := userdata.AppendUint32(nil, 1, 7)
	ud = userdata.AppendString(ud, userdata.TypeComment, "berth net=x")
	if s, ok := ruleComment(ud); !ok || s != "berth net=x" {
		t.Errorf("ruleComment = %q, %v", s, ok)
	}
	for _, bad := range [][]byte{nil, {0}, {0, 5, 'a'}, {0, 1, 'a'}, {1, 9}} {
		if s, ok := ruleComment(bad); ok {
			t.Errorf("ruleComment(%v) = %q", bad, s)
		}
	}
}

func FuzzRuleComment(f *testing.F) {
	f.Add(userdata.AppendString(nil, userdata.TypeComment, "berth net=x"))
	f.Add([]byte{0, 200, 1})
	f.Fuzz(func(t *testing.T, ud []byte) {
		if s, ok := ruleComment(ud); ok && len(s) > len(ud) {
			t.Fatalf("comment %q longer than its userdata", s)
		}
	})
}
