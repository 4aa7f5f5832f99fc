package main

import (
	"strings"
	"testing"
)

func TestParseSpec(t *testing.T) {
	const ok = "label=upstream,hostns=/var/run/netns/h,net=n1,confdir=/tmp/c,cni-path=/a:/b,netns-prefix=bbench-c-1-ul"
	sp, err := parseSpec(ok)
	want := spec{label: "upstream", hostns: "/var/run/netns/h", net: "n1", confdir: "/tmp/c", cniPath: "/a:/b", netnsPrefix: "bbench-c-1-ul"}
	if err != nil || sp != want {
		t.Fatalf("parseSpec(%q) = %+v, %v; want %+v", ok, sp, err, want)
	}
	for _, tc := range []struct{ in, errHas string }{
		{"label=u,hostns=/h,net=n,confdir=/c,cni-path=/b", "no netns-prefix="},
		{ok + ",label=x", "label given twice"},
		{ok + ",color=red", `"color=red" is not one of`},
		{ok + ",", `"" is not one of`},
		{strings.Replace(ok, "net=n1", "net=", 1), "net is empty"},
	} {
		if _, err := parseSpec(tc.in); err == nil || !strings.Contains(err.Error(), tc.errHas) {
			t.Errorf("parseSpec(%q) error = %v; want one containing %q", tc.in, err, tc.errHas)
		}
	}
}
