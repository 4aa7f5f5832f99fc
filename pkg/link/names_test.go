package link

import (
	"testing"

	"github.com/berth-cni/berth/pkg/owner"
)

func TestVlanGatewayNames(t *testing.T) {
	if got := VlanGatewayName("cni0", 100); got != "cni0.100" {
		t.Errorf("VlanGatewayName = %q", got)
	}
	p1, p2 := VlanGatewayPortName("cni0", 100), VlanGatewayPortName("cni0", 101)
	if len(p1) != 13 || p1[:3] != VlanGatewayPortPrefix || p1 == p2 || p1 != VlanGatewayPortName("cni0", 100) {
		t.Errorf("VlanGatewayPortName: %q, %q: want 13 bytes, %q first, distinct per vlan, stable", p1, p2, VlanGatewayPortPrefix)
	}
	if !IsVlanGatewayPort(vlanGatewayAlias+"cni0/100") || IsVlanGatewayPort(owner.Owner{Network: "net", ContainerID: "id", IfName: "eth0"}.Alias()) {
		t.Error("IsVlanGatewayPort confuses gateway ports and container veths")
	}
}
