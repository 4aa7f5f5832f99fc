package portmapcmd

import (
	"context"
	"fmt"
	"time"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport"
	"github.com/berth-cni/berth/pkg/netns"
	"github.com/berth-cni/berth/pkg/owner"
)

// check verifies that every mapping of the config is held by this
// attachment, reserved in the store and forwarded to it.
func check(ctx context.Context, host *netns.NS, args *skel.CmdArgs) error {
	conf, o, err := load(args)
	if err != nil {
		return err
	}
	if conf.Prev == nil {
		return cnierr.Field("prevResult", "(none)", "CHECK needs the prevResult of the chain")
	}
	if len(conf.Mappings) == 0 {
		return nil
	}
	store := hostport.Open(conf.DataDir)
	held, found, err := store.Held(o)
	if err != nil {
		return err
	}
	if !found {
		return fmt.Errorf("portmap: container %s (interface %s) holds no host port; want %s", o.ContainerID, o.IfName, conf.Mappings[0])
	}
	if err := holds(o, held, conf.Mappings); err != nil {
		return err
	}
	if err := reserved(store, o, held); err != nil {
		return err
	}
	dp, err := hostport.NewDatapath(host, held.Backend, conf)
	if err != nil {
		return err
	}
	return dp.Check(held)
}

// holds names the first of ms that o's index, held, lacks.
func holds(o owner.Owner, held hostport.Attachment, ms []config.PortMapping) error {
	for _, m := range ms {
		k := hostport.Key{Proto: m.Protocol, Addr: m.HostIP, Port: m.HostPort}
		ok := false
		for _, h := range held.Mappings {
			if h.Key == k && h.ContainerPort == m.ContainerPort {
				ok = true
			}
		}
		if !ok {
			return fmt.Errorf("portmap: container %s does not hold host port %s", o.ContainerID, m)
		}
	}
	return nil
}

// reserved names the first key of o's index, held, whose reservation is
// not o's.
func reserved(store hostport.Store, o owner.Owner, held hostport.Attachment) error {
	claims, err := store.Claims()
	if err != nil {
		return err
	}
	for _, h := range held.Mappings {
		found := false
		for _, c := range claims {
			if c.Key() == h.Key && c.Owner() == o {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("portmap: the reservation of host port %s by container %s is missing from %s", h.Key, o.ContainerID, store.Dir())
		}
	}
	return nil
}

// statusWait bounds STATUS's wait for the reservations' lock: a runtime
// asks STATUS to know at once whether ADDs can be served.
const statusWait = 5 * time.Second

// status reports code 50 when ports cannot be published: the reservation
// directory cannot be locked or the backend cannot run.
func status(ctx context.Context, host *netns.NS, args *skel.CmdArgs) error {
	conf, err := config.ParsePortmap(args.StdinData)
	if err != nil {
		return err
	}
	store := hostport.Open(conf.DataDir)
	l, err := store.Lock(statusWait)
	if err != nil {
		return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("portmap cannot serve ADD: %w", err))
	}
	l.Unlock()
	if b := backendOf(host, conf); !hostport.BackendAvailable(b) {
		return cnierr.WithCode(cnierr.CodeNotAvailable, fmt.Errorf("portmap cannot serve ADD: backend %s is not available here", b))
	}
	return nil
}
