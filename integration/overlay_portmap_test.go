package integration

import (
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
)

// portmap chained after overlay (conflist/overlay.conflist): a container's
// published port is reached from the outside and from a container on
// another host through its host's underlay address; a second container
// asking for the same host port is refused with 101 naming the holder.
func TestOverlayPortmap(t *testing.T) {
	t.Parallel()
	c := newOvCluster(t, nil)
	c.storeFlags = fileStore(filepath.Join(c.dir, "store"))
	ctx := testCtx(t, time.Minute)
	h1, h2 := c.addHost(ctx, 1), c.addHost(ctx, 2)
	c.wantPeers(ctx, h1, h2)
	publish := map[string]any{"portMappings": []map[string]any{{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}}}

	web := h1.newContainer(ctx, "web")
	web.att.CapabilityArgs = publish
	if _, err := h1.r.Add(ctx, h1.conf.List, web.att); err != nil {
		t.Fatalf("ADD web publishing 8080: %v", err)
	}
	other := h1.newContainer(ctx, "other")
	other.att.CapabilityArgs = publish
	_, err := h1.r.Add(ctx, h1.conf.List, other.att)
	if err := lab.CNIError(err, 101, "8080", web.att.ContainerID); err != nil {
		t.Errorf("second claim of 8080: %v", err)
	}

	ln, err := web.ns.ListenTCP(netip.MustParseAddrPort("0.0.0.0:80"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	published := netip.AddrPortFrom(lab.HostAddr(1).Addr(), 8080)
	client := h2.addContainer(ctx, "client")
	for _, from := range []*lab.NS{c.u.NS, client.ns} {
		if _, err := from.DialTCP(ctx, published); err != nil {
			t.Errorf("%s → %s: %v", from.Name, published, err)
			continue
		}
		if _, err := ln.Accepted(ctx); err != nil {
			t.Errorf("web did not accept the connection from %s: %v", from.Name, err)
		}
	}
	if err := h1.r.Del(ctx, h1.conf.List, web.att); err != nil {
		t.Fatalf("DEL web: %v", err)
	}
	// As containerd does after a failed ADD: DEL, then ADD again.
	if err := h1.r.Del(ctx, h1.conf.List, other.att); err != nil {
		t.Fatalf("DEL other after its refused ADD: %v", err)
	}
	if _, err := h1.r.Add(ctx, h1.conf.List, other.att); err != nil {
		t.Errorf("ADD other after web's DEL freed 8080: %v", err)
	}
}
