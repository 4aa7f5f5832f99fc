package file

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// inotify is an inotify(7) instance watching a few directories (a
// network's leases directory and the network directory, where its shared
// record is), in one queue, so that their events come in the order they
// happened. The backend's writes rename a temp file over a lease file or
// the shared record (IN_MOVED_TO); IN_CLOSE_WRITE, IN_DELETE and
// IN_MOVED_FROM catch files written in place, removed or moved away by
// hand.
type inotify struct {
	f         *os.File // non-blocking, in the runtime's poller
	wds       []int32  // the watch descriptor of each directory, in openInotify's order
	buf       []byte
	closeOnce sync.Once
}

// inotifyName is one event's watch descriptor and file name.
type inotifyName struct {
	wd   int32
	name string
}

const inotifyMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_DELETE | unix.IN_MOVED_FROM |
	unix.IN_DELETE_SELF | unix.IN_MOVE_SELF | unix.IN_ONLYDIR

// openInotify watches dirs.
//
// Equivalent: inotifywait -m -e close_write,moved_to,delete,moved_from,delete_self,move_self $dirs
func openInotify(dirs ...string) (*inotify, error) {
	fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("inotify_init1: %w", err)
	}
	wds := make([]int32, len(dirs))
	for i, dir := range dirs {
		wd, err := unix.InotifyAddWatch(fd, dir, inotifyMask)
		if err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("inotify_add_watch %s: %w", dir, err)
		}
		wds[i] = int32(wd)
	}
	// A non-blocking descriptor: os.NewFile puts it in the runtime's
	// poller, so a read waits without a thread and honours deadlines,
	// and Close ends a read in progress.
	return &inotify{f: os.NewFile(uintptr(fd), fmt.Sprint("inotify ", dirs)), wds: wds, buf: make([]byte, 64<<10)}, nil
}

// close closes the instance, ending a read in progress; twice is a no-op.
func (in *inotify) close() { in.closeOnce.Do(func() { in.f.Close() }) }

// read returns the names of the files events were queued for, by
// directory: names[i] are those in the i-th directory given to
// openInotify. With wait it first waits for an event, or for deadline
// when it is not zero (os.ErrDeadlineExceeded); then it calls mark, and
// then takes every event queued by then without waiting. lost is true
// when the kernel dropped events (its queue overflowed) or a directory's
// watch ended (removed, moved away, unmounted).
func (in *inotify) read(deadline time.Time, wait bool, mark func()) (names [][]string, lost bool, err error) {
	rc, err := in.f.SyscallConn()
	if err != nil {
		return nil, false, err
	}
	names = make([][]string, len(in.wds))
	var rerr error
	take := func(n int) {
		evs, l, perr := parseInotify(in.buf[:n])
		for _, ev := range evs {
			if i := slices.Index(in.wds, ev.wd); i >= 0 {
				names[i] = append(names[i], ev.name)
			}
		}
		lost, rerr = lost || l, errors.Join(rerr, perr)
	}
	if wait {
		if err = in.f.SetReadDeadline(deadline); err != nil {
			return nil, false, err
		}
		err = rc.Read(func(fd uintptr) bool {
			for {
				n, e := unix.Read(int(fd), in.buf)
				switch {
				case e == unix.EINTR:
					continue
				case e == unix.EAGAIN:
					return false // wait until readable
				case e != nil:
					rerr = e
				default:
					take(n)
				}
				return true
			}
		})
		if err = errors.Join(err, rerr); err != nil {
			return nil, false, err
		}
	}
	if err = in.f.SetReadDeadline(time.Time{}); err != nil {
		return nil, false, err
	}
	mark()
	err = rc.Read(func(fd uintptr) bool {
		for {
			n, e := unix.Read(int(fd), in.buf)
			switch {
			case e == unix.EINTR:
				continue
			case e == unix.EAGAIN:
				return true // drained
			case e != nil:
				rerr = e
				return true
			}
			take(n)
		}
	})
	return names, lost, errors.Join(err, rerr)
}

// parseInotify decodes the events read from an inotify descriptor: the
// watch descriptors and names of the files they are about, and lost when
// one of them says that events were dropped or that a watch ended. The
// kernel writes whole events; a short one is an error.
func parseInotify(b []byte) (names []inotifyName, lost bool, err error) {
	for len(b) > 0 {
		if len(b) < unix.SizeofInotifyEvent {
			return names, lost, fmt.Errorf("inotify: %d bytes left, short of an event", len(b))
		}
		wd := int32(binary.NativeEndian.Uint32(b[0:4]))
		mask := binary.NativeEndian.Uint32(b[4:8])
		n := int(binary.NativeEndian.Uint32(b[12:16]))
		if n > len(b)-unix.SizeofInotifyEvent {
			return names, lost, fmt.Errorf("inotify: event name of %d bytes, %d left", n, len(b)-unix.SizeofInotifyEvent)
		}
		name := b[unix.SizeofInotifyEvent : unix.SizeofInotifyEvent+n]
		if i := bytes.IndexByte(name, 0); i >= 0 {
			name = name[:i]
		}
		b = b[unix.SizeofInotifyEvent+n:]
		switch {
		case mask&(unix.IN_Q_OVERFLOW|unix.IN_IGNORED|unix.IN_DELETE_SELF|unix.IN_MOVE_SELF|unix.IN_UNMOUNT) != 0:
			lost = true
		case len(name) > 0:
			names = append(names, inotifyName{wd: wd, name: string(name)})
		}
	}
	return names, lost, nil
}

// sharedFS reports whether dir is on a file system where inotify does not
// see every write: one shared with other machines, or served by a
// process, whose changes do not all pass through this kernel. It names
// the kind. A dir it cannot tell about counts as shared, to be safe.
//
// Equivalent: stat -f -c %t $dir
func sharedFS(dir string) (kind string, shared bool) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return "unknown", true
	}
	return sharedFSType(uint32(st.Type))
}

// sharedFSType is sharedFS on statfs(2)'s f_type.
func sharedFSType(magic uint32) (kind string, shared bool) {
	kind, shared = sharedFSTypes[magic]
	return kind, shared
}

// sharedFSTypes are the f_type magic numbers of the file systems that
// sharedFS calls shared (linux/magic.h and the file systems' own).
var sharedFSTypes = map[uint32]string{
	unix.NFS_SUPER_MAGIC:   "nfs",
	unix.SMB_SUPER_MAGIC:   "smb",
	unix.SMB2_SUPER_MAGIC:  "smb2",
	unix.CIFS_SUPER_MAGIC:  "cifs",
	unix.FUSE_SUPER_MAGIC:  "fuse", // sshfs, virtiofs, glusterfs's client, …
	unix.V9FS_MAGIC:        "9p",
	unix.CEPH_SUPER_MAGIC:  "ceph",
	unix.AFS_SUPER_MAGIC:   "afs",
	unix.AFS_FS_MAGIC:      "afs",
	unix.CODA_SUPER_MAGIC:  "coda",
	unix.OCFS2_SUPER_MAGIC: "ocfs2",
	unix.NCP_SUPER_MAGIC:   "ncp",
	0x01161970:             "gfs2",
	0x0bd00bd0:             "lustre",
	0x47504653:             "gpfs",
	0x786f4256:             "vboxsf",
	0x20030528:             "orangefs",
	0x19830326:             "beegfs",
}
