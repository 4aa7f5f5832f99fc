package hostport

import (
	"net/netip"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/owner"
)

// The attachments of the tests, made as portplan's tests make them: in
// network n1, on eth0, with snat.

func testAttachment(id string, cip4, cip6 string, ms ...Mapping) Attachment {
	a := Attachment{Owner: owner.Owner{Network: "n1", ContainerID: id, IfName: "eth0"}, Mappings: ms, SNAT: true, Backend: config.BackendNFTables}
	if cip4 != "" {
		a.Targets = append(a.Targets, netip.MustParsePrefix(cip4))
	}
	if cip6 != "" {
		a.Targets = append(a.Targets, netip.MustParsePrefix(cip6))
	}
	return a
}

func mapping(proto, addr string, port, cport uint16) Mapping {
	k := Key{Proto: proto, Port: port}
	if addr != "" {
		k.Addr = netip.MustParseAddr(addr)
	}
	return Mapping{Key: k, ContainerPort: cport}
}

func iptAttachment(id string, ms ...Mapping) Attachment {
	a := testAttachment(id, "10.88.0.5/16", "fd00:88::5/64", ms...)
	a.Backend = config.BackendIPTables
	return a
}
