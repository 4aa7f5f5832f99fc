package link

import (
	"errors"
	"fmt"
	"log"
	"os"
	"runtime"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/berth-cni/berth/pkg/cnierr"
)

func nsHandle(fd int) netns.NsHandle { return netns.NsHandle(fd) }

// ErrNetnsGone is wrapped by OpenContainerNS when the path no longer names a
// namespace: DEL treats it as "nothing left inside".
var ErrNetnsGone = errors.New("network namespace is gone")

// OpenContainerNS opens the container's namespace from CNI_NETNS. It refuses
// the plugin's own namespace: configuring the host as if it were a
// container would break the host.
func OpenContainerNS(path string) (ns.NetNS, error) {
	if path == "" {
		return nil, cnierr.Env("CNI_NETNS", path, ErrNetnsGone, "a network namespace path is required")
	}
	n, err := ns.GetNS(path)
	if err != nil {
		var gone ns.NSPathNotExistErr
		if errors.As(err, &gone) {
			return nil, cnierr.Env("CNI_NETNS", path, errors.Join(ErrNetnsGone, err), "no such network namespace")
		}
		return nil, cnierr.Env("CNI_NETNS", path, err, "not a network namespace")
	}
	var self, other unix.Stat_t
	if unix.Stat("/proc/thread-self/ns/net", &self) == nil && unix.Fstat(int(n.Fd()), &other) == nil &&
		self.Dev == other.Dev && self.Ino == other.Ino {
		n.Close()
		return nil, cnierr.Env("CNI_NETNS", path, nil, "is the plugin's own (host) namespace")
	}
	return n, nil
}

// LinkExistsIn reports whether the container's namespace has a link named
// name.
func LinkExistsIn(n ns.NetNS, name string) (bool, error) {
	h, err := netlinkHandleIn(n)
	if err != nil {
		return false, err
	}
	defer h.Close()
	if _, err := h.LinkByName(name); err != nil {
		if IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// OpenContainerNSForAdd opens the container's namespace for an ADD of the
// interface ifName: as OpenContainerNS, and it fails (a CNI_IFNAME error)
// when an interface of that name is already there, so that the ADD never
// takes over or renames what it did not create.
//
// Equivalent: ! ip -n $ns link show $ifName
func OpenContainerNSForAdd(path, ifName string) (ns.NetNS, error) {
	n, err := OpenContainerNS(path)
	if err != nil {
		return nil, err
	}
	if err := RefuseTakenIfName(n, ifName); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// RefuseTakenIfName fails (a CNI_IFNAME error) when the container's
// namespace has an interface called ifName.
func RefuseTakenIfName(n ns.NetNS, ifName string) error {
	taken, err := LinkExistsIn(n, ifName)
	if err == nil && taken {
		err = ifNameTaken(ifName, nil)
	}
	return err
}

// ifNameTaken is the one error for an interface name the container has
// already, found before anything is made (RefuseTakenIfName) or by the
// veth's creation (AddVeth: EEXIST, which can also be a half-done earlier
// ADD of the same attachment that DEL clears).
func ifNameTaken(ifName string, cause error) error {
	return cnierr.Env("CNI_IFNAME", ifName, cause, "an interface of that name already exists in the container (or a previous ADD of this attachment was not deleted)")
}

// inNS runs fn on the calling goroutine's own OS thread switched into the
// namespace n, then switches the thread back. Unlike ns.Do it starts no
// goroutine, so it needs no new OS thread (a thread's creation costs about
// 0.2 ms on a 2-CPU VM, more than the rest of the switch). The goroutine
// is locked to its thread meanwhile, so nothing else runs there; threads
// the runtime starts meanwhile come from its template thread, not this one.
//
// A thread that cannot switch back (also after a panic in fn) would leave
// the goroutine's later host work in the container's namespace, with no way
// back: the process exits at once (status 70, no CNI error on stdout),
// running no deferred undo on the wrong namespace. The attachment's record,
// written before anything is made, lets DEL and GC clean up what the ADD
// made.
func inNS(n ns.NetNS, fn func() error) error {
	runtime.LockOSThread()
	self, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open the thread's own network namespace: %w", err)
	}
	defer self.Close()
	if err := unix.Setns(int(n.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter network namespace %s: %w", n.Path(), err)
	}
	defer func() {
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err != nil {
			log.Printf("cannot return from network namespace %s: %v; exiting", n.Path(), err)
			os.Exit(70)
		}
		runtime.UnlockOSThread()
	}()
	return fn()
}
