package nat

import (
	"errors"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/nat/natplan"
)

// getElem reads one element of set in table inet berth-nat by its key and
// returns its comment; found is false when the set has no such element.
// It is one netlink request for that key, not a dump of the set (which
// google/nftables offers only), so its cost does not grow with the set.
//
// Equivalent: nft get element inet berth-nat $set { $key }
func getElem(conn *netlink.Conn, set string, key []byte) (comment string, found bool, err error) {
	ae := netlink.NewAttributeEncoder()
	ae.String(unix.NFTA_SET_ELEM_LIST_TABLE, natplan.NFTTable)
	ae.String(unix.NFTA_SET_ELEM_LIST_SET, set)
	ae.Nested(unix.NFTA_SET_ELEM_LIST_ELEMENTS, func(list *netlink.AttributeEncoder) error {
		list.Nested(unix.NFTA_LIST_ELEM, func(elem *netlink.AttributeEncoder) error {
			elem.Nested(unix.NFTA_SET_ELEM_KEY, func(k *netlink.AttributeEncoder) error {
				k.Bytes(unix.NFTA_DATA_VALUE, key)
				return nil
			})
			return nil
		})
		return nil
	})
	attrs, err := ae.Encode()
	if err != nil {
		return "", false, fmt.Errorf("nftables: encode get element: %w", err)
	}
	// nfgenmsg: family, version, resource id (big endian, 0).
	data := append([]byte{unix.NFPROTO_INET, unix.NFNETLINK_V0, 0, 0}, attrs...)
	msgs, err := conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETSETELEM),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: data,
	})
	if errors.Is(err, unix.ENOENT) {
		return "", false, nil
	}
	if err != nil {
		return "", false, fmt.Errorf("nftables: get element of set %s: %w", set, err)
	}
	for _, m := range msgs {
		if len(m.Data) < 4 {
			continue
		}
		ud, ok, err := elemUserdata(m.Data[4:])
		if err != nil {
			return "", false, fmt.Errorf("nftables: get element of set %s: %w", set, err)
		}
		if ok {
			c, _ := ruleComment(ud)
			return c, true, nil
		}
	}
	return "", false, fmt.Errorf("nftables: get element of set %s: no element in the reply", set)
}

// elemUserdata finds the first element of a NEWSETELEM message's
// attributes and returns its userdata (empty when it has none).
func elemUserdata(b []byte) (ud []byte, found bool, err error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, false, err
	}
	for ad.Next() {
		if ad.Type() != unix.NFTA_SET_ELEM_LIST_ELEMENTS {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for !found && list.Next() {
				if list.Type() != unix.NFTA_LIST_ELEM {
					continue
				}
				found = true
				list.Nested(func(elem *netlink.AttributeDecoder) error {
					for elem.Next() {
						if elem.Type() == unix.NFTA_SET_ELEM_USERDATA {
							ud = elem.Bytes()
						}
					}
					return nil
				})
			}
			return nil
		})
	}
	return ud, found, ad.Err()
}
