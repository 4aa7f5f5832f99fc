package bridgecmd

import (
	"context"
	"errors"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/link"
	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/state"
)

// sweepEvery is how often an ADD looks for attachments whose container
// is gone without a DEL.
const sweepEvery = time.Minute

// sweep releases this network's attachments whose container went away
// without a DEL: its record is there but its host veth and its namespace
// (or the interface in it) are gone. Runtimes leave such attachments: nerdctl
// sends no DEL after a refused ADD (a host port already held, say) and then
// removes the container; a killed runtime loses its DELs. Without the
// sweep their leases, masquerade entries and records are held for good on
// a host where nobody sends GC.
//
// It runs from ADD at most once per sweepEvery per network, skipped when
// another ADD is sweeping; failures are logged, never fail the ADD. The
// mtime of its lock file, /run/berth/lock/sweep-<network>, is the time of
// the last sweep (so a failed ADD leaves nothing new in the data dir).
func (p Plugin) sweep(ctx context.Context, conf *config.Bridge, stdin []byte, store state.Store) {
	name := "sweep-" + conf.Name
	stamp := filepath.Join(lock.Dir, name)
	if fi, err := os.Stat(stamp); err == nil && time.Since(fi.ModTime()) < sweepEvery {
		return
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return
	}
	l, err := lock.Acquire(name, 0)
	if err != nil {
		return // another ADD is sweeping
	}
	defer l.Unlock()
	now := time.Now()
	if err := os.Chtimes(stamp, now, now); err != nil {
		return
	}
	recs, err := store.List()
	if err != nil {
		log.Printf("%s: sweep: %v", p.Name, err)
	}
	for _, r := range recs {
		o := link.Owner{Network: conf.Name, ContainerID: r.ContainerID, IfName: r.IfName}
		if !gone(r, o) {
			continue
		}
		if err := releaseStale(ctx, conf, stdin, store, o); err != nil {
			log.Printf("%s: sweep: release %s/%s: %v", p.Name, r.ContainerID, r.IfName, err)
		}
	}
}

// gone reports a finished attachment whose container has left: no host
// veth, and its namespace is gone or no longer has the interface. Records
// of unfinished ADDs are left to DEL and GC: one may be in flight, its
// veth not made yet.
func gone(r state.Record, o link.Owner) bool {
	if !r.Complete {
		return false
	}
	if has, err := link.HostLinkExists(link.HostVethName(o)); err != nil || has {
		return false
	}
	if r.Netns == "" {
		return true
	}
	ns, err := link.OpenContainerNS(r.Netns)
	if err != nil {
		return true
	}
	defer ns.Close()
	has, err := link.LinkExistsIn(ns, r.IfName)
	return err == nil && !has
}
