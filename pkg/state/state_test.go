package state

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"testing"
)

func TestPutGetListDelete(t *testing.T) {
	t.Parallel()
	s := Open(t.TempDir(), "net1")
	if _, ok, err := s.Get("c1", "eth0"); ok || err != nil {
		t.Fatalf("Get on empty store = %v, %v; want not found, nil", ok, err)
	}
	a := Record{Network: "net1", ContainerID: "c1", IfName: "eth0", IPs: []string{"10.0.0.2/24"}}
	b := Record{Network: "net1", ContainerID: "c1", IfName: "eth1"}
	for _, r := range []Record{a, b} {
		if err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	got, ok, err := s.Get("c1", "eth0")
	if err != nil || !ok || got.IPs[0] != "10.0.0.2/24" {
		t.Fatalf("Get = %+v, %v, %v", got, ok, err)
	}
	a.Complete = true
	if err := s.Put(a); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil || len(list) != 2 {
		t.Fatalf("List = %+v, %v; want 2 records", list, err)
	}
	if err := s.Delete("c1", "eth0"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("c1", "eth0"); err != nil {
		t.Fatalf("second Delete = %v, want nil", err)
	}
	list, _ = s.List()
	if len(list) != 1 || list[0].IfName != "eth1" {
		t.Fatalf("after Delete List = %+v", list)
	}
}

func TestDistinctPaths(t *testing.T) {
	t.Parallel()
	s := Open("/x", "n")
	// "a_b"+"c" and "a"+"b_c" must not share a file.
	if s.path("a_b", "c") == s.path("a", "b_c") {
		t.Fatal("record paths collide")
	}
}

// A second Put appends a line; Get and List take the last one, also past
// a torn line, and a file past maxRecordFile starts afresh.
func TestPutAppends(t *testing.T) {
	t.Parallel()
	s := Open(t.TempDir(), "net1")
	r := Record{Network: "net1", ContainerID: "c1", IfName: "eth0"}
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	r.IPs, r.Complete = []string{"10.0.0.2/24"}, true
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	path := s.path("c1", "eth0")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(b, []byte(`"containerID"`)); n != 2 {
		t.Fatalf("record file holds %d values, want 2 (appended):\n%s", n, b)
	}
	wantLast := func(what string, ips ...string) {
		t.Helper()
		got, ok, err := s.Get("c1", "eth0")
		if err != nil || !ok || !slices.Equal(got.IPs, ips) {
			t.Fatalf("%s: Get = %+v, %v, %v; want IPs %v", what, got, ok, err, ips)
		}
		list, err := s.List()
		if err != nil || len(list) != 1 || !slices.Equal(list[0].IPs, ips) {
			t.Fatalf("%s: List = %+v, %v; want one record with IPs %v", what, list, err, ips)
		}
	}
	wantLast("after two Puts", "10.0.0.2/24")

	// A line torn by a lost disk cache, then a later Put.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"network":"net1","containerID":"c1","ifN`); err != nil {
		t.Fatal(err)
	}
	f.Close()
	wantLast("after a torn line", "10.0.0.2/24")
	r.IPs = []string{"10.0.0.3/24"}
	if err := s.Put(r); err != nil {
		t.Fatal(err)
	}
	wantLast("after a Put past a torn line", "10.0.0.3/24")

	for i := 0; i < 100; i++ {
		r.IPs = []string{fmt.Sprintf("10.0.1.%d/24", i)}
		if err := s.Put(r); err != nil {
			t.Fatal(err)
		}
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() > maxRecordFile+512 {
		t.Errorf("record file is %d bytes after 100 Puts, want at most about %d", fi.Size(), maxRecordFile)
	}
	wantLast("after 100 more Puts", "10.0.1.99/24")
}

// A record written whole over several lines (indented) still reads.
func TestRecordOverLines(t *testing.T) {
	t.Parallel()
	s := Open(t.TempDir(), "net1")
	if err := os.MkdirAll(s.Dir(), 0o700); err != nil {
		t.Fatal(err)
	}
	b := []byte("{\n  \"network\": \"net1\",\n  \"containerID\": \"c1\",\n  \"ifName\": \"eth0\",\n  \"complete\": true\n}\n")
	if err := os.WriteFile(s.path("c1", "eth0"), b, 0o600); err != nil {
		t.Fatal(err)
	}
	got, ok, err := s.Get("c1", "eth0")
	if err != nil || !ok || !got.Complete {
		t.Fatalf("Get = %+v, %v, %v", got, ok, err)
	}
}
