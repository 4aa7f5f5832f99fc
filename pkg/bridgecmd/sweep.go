package bridgecmd

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/berth-cni/berth/pkg/lock"
	"github.com/berth-cni/berth/pkg/owner"
	"github.com/berth-cni/berth/pkg/state"
)

// sweepEvery is how often an ADD looks for attachments whose container
// is gone without a DEL.
const sweepEvery = time.Minute

// sweep releases this network's attachments whose container went away
// without a DEL: its record is there but its host veth and its namespace
// (or the interface in it) are gone. Runtimes leave such attachments:
// nerdctl sends no DEL after a refused ADD (a host port already held, say)
// and then removes the container; a killed runtime loses its DELs. Without
// the sweep their leases, masquerade entries and records are held for
// good on a host where nobody sends GC.
//
// It runs from ADD at most once per sweepEvery per network, skipped when
// another ADD is sweeping; failures are logged, never fail the ADD. The
// mtime of its lock file, <lock dir>/sweep-<network>, is the time of the
// last sweep (so a failed ADD leaves nothing new in the data dir).
func (p Plugin) sweep(ctx context.Context, c *cmd) {
	dir := p.LockDir
	if dir == "" {
		dir = lock.Dir
	}
	name := "sweep-" + c.conf.Name
	stamp := filepath.Join(dir, name)
	if fi, err := os.Stat(stamp); err == nil && time.Since(fi.ModTime()) < sweepEvery {
		return
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return
	}
	l, err := p.lock(name, 0)
	if err != nil {
		return // another ADD is sweeping
	}
	defer l.Unlock()
	now := time.Now()
	if err := os.Chtimes(stamp, now, now); err != nil {
		return
	}
	recs, err := c.store.List()
	if err != nil {
		logf(p.Name, "sweep: %v", err)
	}
	for _, r := range recs {
		o := owner.Owner{Network: c.conf.Name, ContainerID: r.ContainerID, IfName: r.IfName}
		if !c.gone(r, o) {
			continue
		}
		if err := c.releaseStale(ctx, o); err != nil {
			logf(p.Name, "sweep: release %s/%s: %v", r.ContainerID, r.IfName, err)
		}
	}
}

// gone reports a finished attachment whose container has left: no host
// veth, and its namespace is gone or no longer has the interface. Records
// of unfinished ADDs are left to DEL and GC: one may be in flight, its
// veth not made yet.
func (c *cmd) gone(r state.Record, o owner.Owner) bool {
	if !r.Complete {
		return false
	}
	if has, err := c.k.HostLinkExists(o.HostVeth()); err != nil || has {
		return false
	}
	if r.Netns == "" {
		return true
	}
	ctr, err := c.k.OpenContainer(r.Netns)
	if err != nil {
		return true // gone, or not a namespace any more: nothing of it is there
	}
	defer ctr.Close()
	has, err := ctr.LinkExists(r.IfName)
	return err == nil && !has
}
