// Package link creates, inspects and deletes the links berth owns: bridges,
// veth pairs and their addresses, macvlans and the host shim, with netlink
// in the network namespace each function is given (a *netns.NS: the
// host's, or a container's). The names of links derived from an attachment
// come from pkg/owner; the names of links derived from a bridge or a
// master are pure functions here.
package link
