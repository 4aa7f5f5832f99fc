package hostport

import (
	"fmt"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/iptables"
	"github.com/berth-cni/berth/pkg/nat"
	"github.com/berth-cni/berth/pkg/netns"
)

// Datapath forwards held host ports to their containers. Add and Remove
// are one transaction each; Remove of something absent succeeds; Check
// names the first piece of an attachment that is missing.
type Datapath interface {
	Add(a Attachment) error
	Remove(a Attachment) error
	Check(a Attachment) error
}

// DefaultBackend is the backend for a config that names none: what n's
// NAT already uses (nat.Detect: iptables when the legacy xtables nat table
// is in use, else nftables).
func DefaultBackend(n *netns.NS) string { return nat.Detect(n) }

// NewDatapath returns the datapath of backend ("nftables" or "iptables")
// in n. conf (which may be nil) gives the iptables backend its conditions
// and marks.
func NewDatapath(n *netns.NS, backend string, conf *config.Portmap) (Datapath, error) {
	switch backend {
	case config.BackendNFTables:
		return NewNFT(n), nil
	case config.BackendIPTables:
		return NewIPTables(n, conf, iptables.Default), nil
	}
	return nil, fmt.Errorf("portmap: unknown backend %q", backend)
}

// BackendAvailable reports whether backend can run here: nftables always
// (netlink, in-process), iptables when its tools are installed.
func BackendAvailable(backend string) bool {
	switch backend {
	case config.BackendNFTables:
		return true
	case config.BackendIPTables:
		return nat.Available(config.BackendIPTables)
	}
	return false
}
