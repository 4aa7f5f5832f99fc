package nat

import (
	"testing"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/nat/natplan"
)

// elemReply encodes a GETSETELEM reply's attributes holding one element
// with userdata ud (none when nil).
func elemReply(t testing.TB, ud []byte) []byte {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, natplan.NFTTable)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(list *netlink.AttributeEncoder) error {
		list.Nested(unix.NFTA_LIST_ELEM, func(e *netlink.AttributeEncoder) error {
			e.Nested(unix.NFTA_SET_ELEM_KEY, func(k *netlink.AttributeEncoder) error {
				k.Bytes(unix.NFTA_DATA_VALUE, []byte{10, 0, 0, 1})
				return nil
			})
			if ud != nil {
				e.Bytes(unix.NFTA_SET_ELEM_USERDATA, ud)
			}
			return nil
		})
		return nil
	})
	b, err := ae.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestElemUserdata(t *testing.T) {
	ud := []byte{0, 4, 'a', 'b', 'c', 0}
	got, found, err := elemUserdata(elemReply(t, ud))
	if err != nil || !found || string(got) != string(ud) {
		t.Fatalf("elemUserdata = %q, %v, %v; want %q, true, nil", got, found, err, ud)
	}
	if c, ok := ruleComment(got); !ok || c != "abc" {
		t.Fatalf("comment = %q, %v", c, ok)
	}
	if got, found, err := elemUserdata(elemReply(t, nil)); err != nil || !found || len(got) != 0 {
		t.Fatalf("element without userdata: %q, %v, %v", got, found, err)
	}
}

// FuzzElemUserdata: the reply comes from the kernel, where anyone with
// CAP_NET_ADMIN in the namespace shapes the set's elements.
func FuzzElemUserdata(f *testing.F) {
	f.Add(elemReply(f, []byte{0, 4, 'a', 'b', 'c', 0}))
	f.Add([]byte{4, 0, 3, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		ud, found, err := elemUserdata(b)
		if err == nil && !found && ud != nil {
			t.Fatalf("userdata %q without an element", ud)
		}
		ruleComment(ud)
	})
}
