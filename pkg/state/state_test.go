package state

import (
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
