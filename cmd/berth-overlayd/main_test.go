package main

import (
	"errors"
	"flag"
	"io"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/pkg/overlay"
	"github.com/berth-cni/berth/pkg/overlay/agent"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/etcd"
)

func hostname() (string, error) { return "node-a", nil }

func TestParseFlagsDefaults(t *testing.T) {
	t.Parallel()
	o, err := parseFlags([]string{"-network", "ov", "-cidr", "10.244.0.0/16", "-store", "file", "-store-dir", "/srv/ov"}, io.Discard, hostname)
	if err != nil {
		t.Fatal(err)
	}
	want := options{
		agent: agent.Config{
			Network:  store.Network{Name: "ov", CIDR: netip.MustParsePrefix("10.244.0.0/16"), SubnetLen: 24, VNI: 1, Port: 4789},
			Node:     "node-a",
			StateDir: overlay.DefaultStateDir,
			LeaseTTL: 30 * time.Second,
			AckBound: 5 * time.Second,
		},
		store:    "file",
		storeDir: "/srv/ov",
		listen:   "127.0.0.1:9614",
	}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("parseFlags defaults:\n%+v\nwant\n%+v", o, want)
	}
}

func TestParseFlagsAll(t *testing.T) {
	t.Parallel()
	o, err := parseFlags([]string{
		"-network", "ov", "-cidr", "10.50.0.0/16", "-subnet-len", "26", "-vni", "4242", "-port", "8472",
		"-store", "etcd", "-etcd-endpoints", " http://10.0.0.1:2379, http://10.0.0.2:2379,", "-etcd-prefix", "/x",
		"-node", "n1", "-underlay", "eth1", "-vtep", "10.0.0.5", "-mtu", "1400", "-state-dir", "/tmp/s",
		"-listen", "", "-lease-ttl", "10s", "-release-on-exit", "-ack-bound", "2s",
		"-encrypt", "-key-rotation", "1h",
	}, io.Discard, hostname)
	if err != nil {
		t.Fatal(err)
	}
	want := options{
		agent: agent.Config{
			Network: store.Network{Name: "ov", CIDR: netip.MustParsePrefix("10.50.0.0/16"), SubnetLen: 26, VNI: 4242, Port: 8472,
				Encryption: store.EncryptESP, KeyRotation: time.Hour},
			Node:     "n1",
			Underlay: "eth1", VTEP: netip.MustParseAddr("10.0.0.5"), MTU: 1400, StateDir: "/tmp/s",
			LeaseTTL: 10 * time.Second, ReleaseOnExit: true, AckBound: 2 * time.Second,
		},
		store: "etcd",
		etcd:  etcd.Config{Endpoints: []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}, Prefix: "/x"},
	}
	if !reflect.DeepEqual(o, want) {
		t.Fatalf("parseFlags:\n%+v\nwant\n%+v", o, want)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	t.Parallel()
	base := []string{"-network", "ov", "-cidr", "10.244.0.0/16", "-store", "file", "-store-dir", "/srv/ov"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-network", ""}, "-network: a network name is required"},
		{[]string{"-cidr", ""}, "-cidr: the cluster network is required"},
		{[]string{"-cidr", "10.244.0.0"}, `-cidr "10.244.0.0"`},
		{[]string{"-cidr", "10.244.0.1/16"}, "host bits are set"},
		{[]string{"-cidr", "fd00::/48"}, "only IPv4"},
		{[]string{"-network", "../etc"}, `"../etc"`},
		{[]string{"-subnet-len", "16"}, "subnetLen 16"},
		{[]string{"-subnet-len", "31"}, "subnetLen 31"},
		{[]string{"-vni", "0"}, "-vni 0"},
		{[]string{"-vni", "16777216"}, "-vni 16777216"},
		{[]string{"-port", "0"}, "-port 0"},
		{[]string{"-port", "70000"}, "-port 70000"},
		{[]string{"-vtep", "fd00::1"}, `-vtep "fd00::1"`},
		{[]string{"-vtep", "nope"}, `-vtep "nope"`},
		{[]string{"-mtu", "100"}, "-mtu 100"},
		{[]string{"-lease-ttl", "500ms"}, "-lease-ttl 500ms"},
		{[]string{"-ack-bound", "0s"}, "-ack-bound 0s"},
		{[]string{"-state-dir", ""}, "-state-dir"},
		{[]string{"-store", "consul"}, `-store "consul"`},
		{[]string{"-store-dir", ""}, "-store-dir"},
		{[]string{"-store", "etcd"}, "-etcd-endpoints"},
		{[]string{"-store", "etcd", "-etcd-endpoints", " , "}, "-etcd-endpoints"},
		{[]string{"-key-rotation", "1h"}, "-key-rotation 1h0m0s: only with -encrypt"},
		{[]string{"-encrypt", "-key-rotation", "5s"}, "-key-rotation 5s: must be at least 10s"},
		{[]string{"extra"}, `unexpected argument "extra"`},
		{[]string{"-nope"}, "flag provided but not defined"},
	} {
		args := append(append([]string{}, base...), tc.args...)
		_, err := parseFlags(args, io.Discard, hostname)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want it to contain %q", tc.args, err, tc.want)
		}
	}
	_, err := parseFlags(base, io.Discard, func() (string, error) { return "", errors.New("no uts") })
	if err == nil || !strings.Contains(err.Error(), "-node") {
		t.Errorf("without a hostname: %v", err)
	}
	var out strings.Builder
	if _, err := parseFlags([]string{"-version"}, &out, hostname); !errors.Is(err, flag.ErrHelp) || !strings.Contains(out.String(), "berth-overlayd") {
		t.Errorf("-version: %v, %q", err, out.String())
	}
}
