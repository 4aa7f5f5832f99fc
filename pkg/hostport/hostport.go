// Package hostport keeps the rule berth exists for: a host port is held by
// one container at a time. It has three parts:
//
//   - the reservations (store.go): one file per claimed (protocol, host
//     address, host port) under the portmap data directory, created under
//     one flock, so that of N concurrent claims of a port exactly one wins,
//     and an index per attachment so DEL frees exactly what that
//     attachment holds;
//   - the host check (listen.go): a claim overlapping a socket a host
//     process has bound is refused too;
//   - the datapath (nft.go, iptables.go): DNAT from the host port to the
//     container, looked up in one map per family on nftables, so an ADD
//     costs the same with 5 or 5,000 mappings on the host.
//
// Every kernel effect (the datapath, the probe sockets, route_localnet,
// conntrack) acts in the network namespace it is given, a *netns.NS; files
// are under the store's directory. The pure parts (keys, conflicts, the
// nftables elements of PlanNFT, the iptables plans) are package portplan,
// tested without root; this package reads the kernel and the files into
// portplan's values and applies its plans. The nftables datapath is tested
// over a recording fake too.
package hostport

import "github.com/berth-cni/berth/pkg/hostport/portplan"

// Key, Mapping and Attachment are portplan's, named here as well because
// they are the words of this package's API: what Store claims and
// releases, what a Datapath forwards, what CheckBound probes.
type (
	Key        = portplan.Key
	Mapping    = portplan.Mapping
	Attachment = portplan.Attachment
)
