package ipam

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/allocator"
	"github.com/containernetworking/plugins/plugins/ipam/host-local/backend/disk"
)

// HostLocal is the IPAM type served in-process. berth links the pinned
// upstream host-local's allocator and disk store, so leases, their files
// under dataDir and the lock are the ones the host-local binary uses (and
// the two can serve one network side by side); what is saved is the exec
// of a second program on every ADD, DEL and CHECK (bench/README.md has
// what it costs).
const HostLocal = "host-local"

// openHostLocal parses the ipam section (ranges, routes, requested IPs
// from CNI_ARGS, args and runtimeConfig, as host-local does) and opens
// the network's lease store.
func openHostLocal(netconf []byte, cniArgs string) (*allocator.IPAMConfig, *disk.Store, error) {
	conf, _, err := allocator.LoadIPAMConfig(netconf, cniArgs)
	if err != nil {
		return nil, nil, err
	}
	store, err := disk.New(conf.Name, conf.DataDir)
	if err != nil {
		return nil, nil, err
	}
	return conf, store, nil
}

// newAttachment is host-local's store for an Attachment the caller knows
// holds no lease yet: the duplicate-lease check, a read of every lease
// file of the network (host-local's GetByID), is skipped, so an ADD's cost
// does not grow with the leases already on the host.
type newAttachment struct{ *disk.Store }

func (newAttachment) GetByID(string, string) []net.IP { return nil }

// hostLocalLease is an in-process host-local ADD with its config parsed and
// its lease store open: what an ADD can do before the attachment is
// recorded. Its take leases (and closes the store); close is for an ADD
// that will not, and does nothing after take.
type hostLocalLease struct {
	conf   *allocator.IPAMConfig
	store  *disk.Store
	a      Attachment
	closed once
}

func prepareHostLocal(netconf []byte, a Attachment) (*hostLocalLease, error) {
	conf, store, err := openHostLocal(netconf, a.Args)
	if err != nil {
		return nil, err
	}
	return &hostLocalLease{conf: conf, store: store, a: a}, nil
}

func (l *hostLocalLease) close() { l.closed.Do(func() { l.store.Close() }) }

// take leases one address from each range set (a requested one where a
// requested address falls in the set) and returns them with the config's
// routes and resolvConf's DNS. On error nothing stays leased.
//
// Equivalent: CNI_COMMAND=ADD host-local < $netconf
func (l *hostLocalLease) take(fresh bool) (res *current.Result, err error) {
	defer l.close()
	conf, a := l.conf, l.a
	var store backend.Store = l.store
	if fresh {
		store = newAttachment{l.store}
	}
	res = &current.Result{CNIVersion: current.ImplementedSpecVersion, Routes: conf.Routes}
	if conf.ResolvConf != "" {
		if res.DNS, err = readResolvConf(conf.ResolvConf); err != nil {
			return nil, err
		}
	}
	wanted := append([]net.IP(nil), conf.IPArgs...)
	var taken []*allocator.IPAllocator
	defer func() {
		if err != nil {
			for _, al := range taken {
				err = errors.Join(err, al.Release(a.ContainerID, a.IfName))
			}
		}
	}()
	for i := range conf.Ranges {
		al := allocator.NewIPAllocator(&conf.Ranges[i], store, i)
		var want net.IP
		for j, ip := range wanted {
			if conf.Ranges[i].Contains(ip) {
				want = ip
				wanted = append(wanted[:j], wanted[j+1:]...)
				break
			}
		}
		ipc, err := al.Get(a.ContainerID, a.IfName, want)
		if err != nil {
			return nil, fmt.Errorf("range set %d: %w", i, err)
		}
		taken = append(taken, al)
		res.IPs = append(res.IPs, ipc)
	}
	if len(wanted) > 0 {
		return nil, fmt.Errorf("requested addresses %v are in none of the ranges", wanted)
	}
	return res, nil
}

// hostLocalDel releases every address a holds in the network.
//
// Equivalent: CNI_COMMAND=DEL host-local < $netconf
func hostLocalDel(netconf []byte, a Attachment) error {
	conf, store, err := openHostLocal(netconf, a.Args)
	if err != nil {
		return err
	}
	defer store.Close()
	var errs []error
	for i := range conf.Ranges {
		errs = append(errs, allocator.NewIPAllocator(&conf.Ranges[i], store, i).Release(a.ContainerID, a.IfName))
	}
	return errors.Join(errs...)
}

// hostLocalRelease frees the leases of addrs that a holds: the caller
// knows them (berth's record of the ADD), so no lease file but theirs is
// read, where host-local's own release reads every lease of the network.
// A lease file naming another holder is left alone.
//
// Equivalent: rm $dataDir/$network/$ip, for each ip whose file names a
func hostLocalRelease(netconf []byte, a Attachment, addrs []netip.Addr) error {
	conf, store, err := openHostLocal(netconf, a.Args)
	if err != nil {
		return err
	}
	defer store.Close()
	if err := store.Lock(); err != nil {
		return err
	}
	defer store.Unlock()
	dir := conf.DataDir
	if dir == "" {
		dir = defaultHostLocalDir
	}
	dir = filepath.Join(dir, conf.Name)
	holder := strings.TrimSpace(a.ContainerID) + disk.LineBreak + a.IfName
	var errs []error
	for _, ip := range addrs {
		path := disk.GetEscapedPath(dir, ip.String())
		b, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if got := strings.TrimSpace(string(b)); got != holder && got != strings.TrimSpace(a.ContainerID) {
			continue
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// defaultHostLocalDir is host-local's dataDir when the config names none.
const defaultHostLocalDir = "/var/lib/cni/networks"

// hostLocalCheck fails when a holds no address in the network.
//
// Equivalent: CNI_COMMAND=CHECK host-local < $netconf
func hostLocalCheck(netconf []byte, a Attachment) error {
	_, store, err := openHostLocal(netconf, a.Args)
	if err != nil {
		return err
	}
	defer store.Close()
	if !store.FindByID(a.ContainerID, a.IfName) {
		return fmt.Errorf("no address leased to container %s interface %s", a.ContainerID, a.IfName)
	}
	return nil
}

// readResolvConf takes nameserver, domain, search and options lines from
// a resolv.conf file, as host-local's resolvConf key does.
func readResolvConf(path string) (types.DNS, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return types.DNS{}, fmt.Errorf("resolvConf: %w", err)
	}
	return parseResolvConf(string(b)), nil
}

func parseResolvConf(text string) types.DNS {
	var dns types.DNS
	for _, line := range strings.Split(text, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, f[1])
		case "domain":
			dns.Domain = f[1]
		case "search":
			dns.Search = append(dns.Search, f[1:]...)
		case "options":
			dns.Options = append(dns.Options, f[1:]...)
		}
	}
	return dns
}
