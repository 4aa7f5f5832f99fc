package link

import (
	"errors"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/netns"
)

// OpenContainer opens the container's namespace from CNI_NETNS. It refuses
// the plugin's own namespace: configuring the host as if it were a
// container would break the host. A path that names no namespace any more
// wraps netns.ErrGone: DEL treats it as "nothing left inside".
func OpenContainer(path string) (*netns.NS, error) {
	if path == "" {
		return nil, cnierr.Env("CNI_NETNS", path, netns.ErrGone, "a network namespace path is required")
	}
	n, err := netns.Open(path)
	switch {
	case errors.Is(err, netns.ErrGone):
		return nil, cnierr.Env("CNI_NETNS", path, err, "no such network namespace")
	case err != nil:
		return nil, cnierr.Env("CNI_NETNS", path, err, "not a network namespace")
	case n.IsHost():
		n.Close()
		return nil, cnierr.Env("CNI_NETNS", path, nil, "is the plugin's own (host) namespace")
	}
	return n, nil
}

// OpenContainerForAdd opens the container's namespace for an ADD of the
// interface ifName: as OpenContainer, and it fails (a CNI_IFNAME error)
// when an interface of that name is already there, so that the ADD never
// takes over or renames what it did not create.
//
// Equivalent: ! ip -n $ns link show $ifName
func OpenContainerForAdd(path, ifName string) (*netns.NS, error) {
	n, err := OpenContainer(path)
	if err != nil {
		return nil, err
	}
	if err := RefuseTakenIfName(n, ifName); err != nil {
		n.Close()
		return nil, err
	}
	return n, nil
}

// Exists reports whether n has a link called name.
//
// Equivalent: ip -n $n link show $name
func Exists(n *netns.NS, name string) (bool, error) {
	if _, err := n.Netlink().LinkByName(name); err != nil {
		if IsNotFound(err) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// RefuseTakenIfName fails (a CNI_IFNAME error) when the container's
// namespace has an interface called ifName.
func RefuseTakenIfName(container *netns.NS, ifName string) error {
	taken, err := Exists(container, ifName)
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
