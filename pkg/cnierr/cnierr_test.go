package cnierr

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestToCNICodes(t *testing.T) {
	t.Parallel()
	cases := []struct {
		err  error
		code uint
		has  string
	}{
		{Field("mtu", 20, "must be between %d and %d", 68, 65535), 7, `invalid config: mtu 20: must be between 68 and 65535`},
		{fmt.Errorf("add: %w", Field("name", "../x", "bad")), 7, `name "../x"`},
		{Env("CNI_NETNS", "/x", nil, "no such network namespace"), 4, `CNI_NETNS="/x"`},
		{fmt.Errorf("bridge: %w", WithCode(11, errors.New("timed out waiting for lock"))), 11, "timed out"},
		{KernelFeature("bridge VLAN filtering", errors.New("operation not supported")), 100, "lacks bridge VLAN filtering"},
		{WithCode(CodeNotAvailable, errors.New("nft gone")), 50, "nft gone"},
		{fmt.Errorf("ipam: %w", &types.Error{Code: 11, Msg: "busy"}), 11, "ipam: busy"},
		{errors.New("plain"), 999, "plain"},
	}
	for _, c := range cases {
		got := ToCNI(c.err)
		var te *types.Error
		if !errors.As(got, &te) {
			t.Fatalf("ToCNI(%v) = %T", c.err, got)
		}
		if te.Code != c.code || !strings.Contains(te.Msg, c.has) {
			t.Errorf("ToCNI(%v) = {%d %q}, want code %d containing %q", c.err, te.Code, te.Msg, c.code, c.has)
		}
	}
	if ToCNI(nil) != nil {
		t.Fatal("ToCNI(nil) != nil")
	}
}
