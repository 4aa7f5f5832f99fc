// Package etcd is the store.Store backend on an etcd cluster
// (go.etcd.io/etcd/client/v3): a subnet lease is a key attached to an etcd
// lease with the TTL, Watch a prefix read then a prefix watch. It touches
// only the keys under its prefix in the etcd cluster it is given.
package etcd

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strings"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/internal/tracker"
)

// The etcd backend keeps, under its prefix:
//
//	<prefix>/<network>/config               the store.Network, JSON
//	<prefix>/<network>/subnets/<a.b.c.d-len> a store.Lease, JSON, attached to an etcd lease with the TTL
//	<prefix>/<network>/history/<a.b.c.d-len> a store.LastHolder, JSON, no TTL: one per subnet ever leased
//	<prefix>/<network>/shared               the network's shared record, JSON {"attrs":{…}}, no TTL (shared.go)
//
// etcd deletes a subnet key when its lease expires, so Leases is a plain
// prefix read, Watch a range read then a range watch from the revision
// after it (watch.go), of the shared key and the subnet keys: the range
// from <network>/shared to the end of <network>/subnets/, which holds
// no other key of berth's ("shared" sorts after "history/" and before
// "subnets/"). A lease's Rev is its key's ModRevision, and so is the
// shared record's.
//
// Every write of a subnet key (Acquire's claim, Hold.Update, and the
// deletion by Release) puts its history key in the same transaction, so
// that key's ModRevision is the last write of the subnet's last lease
// (the LastHolder's Rev), and it outlives the lease. An expiry writes
// nothing: an expired lease is dated by its last write. Acquire reads the
// history, at the revision of its read of the leases, only when the host
// neither holds a lease nor asks for a free subnet (pick). The history is
// not in the watched range, so Watch never sees it; the shared key is
// not under subnets/, so Leases, Acquire and a berth that predates it
// never see that.

// DefaultPrefix is where the overlay's keys live when Config.Prefix
// is empty.
const DefaultPrefix = "/berth/overlay"

const (
	defaultDialTimeout    = 5 * time.Second
	defaultRequestTimeout = 5 * time.Second
	// acquireAttempts bounds Acquire's read-then-transaction loop when
	// other hosts keep winning the race for the subnet it picked.
	acquireAttempts = 10
)

// Config is how to reach the etcd cluster.
type Config struct {
	Endpoints   []string      // e.g. https://10.0.0.1:2379
	Prefix      string        // key prefix, DefaultPrefix when empty
	DialTimeout time.Duration // 5s when zero
	TLS         *tls.Config   // nil for plain http endpoints
	// Username and Password authenticate to an etcd with auth enabled
	// (both or neither; with neither, etcd requiring client certificates
	// takes the user from the certificate's CN). The password is never
	// logged.
	Username, Password string
	// RequestTimeout bounds each request to etcd (5s when zero), so a dead
	// cluster fails a call with store.ErrUnavailable rather than hanging it.
	RequestTimeout time.Duration
}

type etcdStore struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration

	t         *tracker.Tracker // Hold and Watch goroutines
	closeOnce sync.Once
	closeErr  error
}

// New returns a store.Store on the etcd cluster of cfg. It does not wait for
// the cluster: an unreachable one fails the calls, with store.ErrUnavailable.
// With a Username it authenticates first (the client fetches a token), so
// an unreachable cluster fails New itself, within the dial timeout, with
// store.ErrUnavailable, and a wrong password fails it with etcd's
// "authentication failed".
func New(cfg Config) (store.Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd store: at least one endpoint is required")
	}
	if (cfg.Username == "") != (cfg.Password == "") {
		return nil, errors.New("etcd store: a username needs a password and a password a username")
	}
	prefix := strings.TrimRight(cfg.Prefix, "/")
	if cfg.Prefix == "" {
		prefix = DefaultPrefix
	}
	if prefix == "" {
		return nil, fmt.Errorf("etcd store: prefix %q: must name a key path, not the root", cfg.Prefix)
	}
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = defaultDialTimeout
	}
	timeout := cfg.RequestTimeout
	if timeout <= 0 {
		timeout = defaultRequestTimeout
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: dial,
		TLS:         cfg.TLS,
		Username:    cfg.Username,
		Password:    cfg.Password,
		// Errors reach the caller as return values; the client's own
		// retry chatter would only fill the agent's stderr.
		Logger: zap.NewNop(),
		// gRPC's default reconnect backoff grows to 2 minutes; a node
		// agent should find a restarted etcd within a few seconds, well
		// within its lease TTL.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: dial,
		}),
			// A wrong CA or a refused client certificate should say so,
			// not only "context deadline exceeded".
			grpc.WithChainUnaryInterceptor(keepDialCause),
		},
	})
	if unreachable(err) { // only New's authentication waits for the cluster
		return nil, fmt.Errorf("etcd store %v: authenticate as %q: %w: %w", cfg.Endpoints, cfg.Username, store.ErrUnavailable, err)
	}
	if err != nil {
		return nil, fmt.Errorf("etcd store %v: %w", cfg.Endpoints, err)
	}
	return &etcdStore{cli: cli, prefix: prefix, timeout: timeout, t: tracker.New()}, nil
}

// netKeys are the keys of one network.
type netKeys struct {
	config  string // the config key
	subnets string // the prefix of the subnet keys
	history string // the prefix of the history keys
	shared  string // the shared record's key
}

// watched returns the range of keys a Watch reads and follows, [from,
// end): the shared key, then the subnet keys.
func (k netKeys) watched() (from, end string) {
	return k.shared, clientv3.GetPrefixRangeEnd(k.subnets)
}

// keys returns the keys of network, after checking that the name cannot
// escape its key path.
func (s *etcdStore) keys(network string) (netKeys, error) {
	if err := config.ValidateNetworkName(network); err != nil {
		return netKeys{}, fmt.Errorf("overlay network: %w", err)
	}
	base := s.prefix + "/" + network
	return netKeys{config: base + "/config", subnets: base + "/subnets/", history: base + "/history/", shared: base + "/shared"}, nil
}

// lastHolder returns the history key of l's subnet and its value, l's host.
func (k netKeys) lastHolder(l store.Lease) (key, val string, err error) {
	b, err := json.Marshal(store.LastHolder{Subnet: l.Subnet, Host: l.Host})
	return k.history + store.SubnetKey(l.Subnet, '-'), string(b), err
}

// request returns a context for one request: ctx bounded by the request
// timeout.
func (s *etcdStore) request(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, s.timeout)
}

// fail wraps err from an etcd request made under ctx: the caller's own
// cancellation stays itself; timeouts and transport failures wrap
// store.ErrUnavailable.
func fail(ctx context.Context, what string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w", what, errors.Join(ctx.Err(), err))
	}
	if unreachable(err) {
		return fmt.Errorf("%s: %w: %w", what, store.ErrUnavailable, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func unreachable(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, clientv3.ErrNoAvailableEndpoints) {
		return true
	}
	code := status.Code(err)
	var ee rpctypes.EtcdError
	if errors.As(err, &ee) {
		code = ee.Code()
	}
	// etcd answers Unavailable for "no leader" and its own timeouts too.
	return code == codes.Unavailable || code == codes.DeadlineExceeded
}

func (s *etcdStore) EnsureNetwork(ctx context.Context, n store.Network) (store.Network, error) {
	if err := n.Validate(); err != nil {
		return store.Network{}, err
	}
	k, err := s.keys(n.Name)
	if err != nil {
		return store.Network{}, err
	}
	key := k.config
	val, err := json.Marshal(n)
	if err != nil {
		return store.Network{}, err
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	// Put if absent, else read: one round trip, and the first writer wins.
	//
	// Equivalent: etcdctl txn <<< 'create("$key") = "0"\n\nput $key $val\n\nget $key\n'
	resp, err := s.cli.Txn(rctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).
		Else(clientv3.OpGet(key)).
		Commit()
	if err != nil {
		return store.Network{}, fail(ctx, fmt.Sprintf("store overlay network %q", n.Name), err)
	}
	if resp.Succeeded {
		return n, nil
	}
	kvs := resp.Responses[0].GetResponseRange().GetKvs()
	if len(kvs) == 0 { // deleted between the compare and the get: impossible in one txn
		return store.Network{}, fmt.Errorf("store overlay network %q: %s vanished inside a transaction", n.Name, key)
	}
	stored, err := store.DecodeNetwork(kvs[0].Value)
	if err != nil {
		return store.Network{}, fmt.Errorf("%s: %w", key, err)
	}
	return stored, store.CheckStoredNetwork(stored, n)
}

// storedLease is a subnet key as read: its lease (Rev, its ModRevision)
// and the etcd lease it is attached to.
type storedLease struct {
	store.Lease
	key     string
	leaseID clientv3.LeaseID
}

// decodeLeases decodes the subnet keys read under the prefix subnets.
func decodeLeases(subnets string, kvs []*mvccpb.KeyValue) ([]storedLease, error) {
	out := make([]storedLease, 0, len(kvs))
	for _, kv := range kvs {
		l, err := decodeKV(subnets, kv)
		if err != nil {
			return nil, err
		}
		out = append(out, storedLease{Lease: l, key: string(kv.Key), leaseID: clientv3.LeaseID(kv.Lease)})
	}
	return out, nil
}

// decodeKV decodes one subnet key read under the prefix subnets, as a
// read or a watch event returns it; the lease's Rev is the key's
// ModRevision.
func decodeKV(subnets string, kv *mvccpb.KeyValue) (store.Lease, error) {
	key := string(kv.Key)
	subnet, err := store.ParseSubnetKey(strings.TrimPrefix(key, subnets), '-')
	if err != nil {
		return store.Lease{}, fmt.Errorf("%s: %w", key, err)
	}
	l, err := store.DecodeLease(kv.Value, subnet)
	if err != nil {
		return store.Lease{}, fmt.Errorf("%s: %w", key, err)
	}
	l.Rev = kv.ModRevision
	return l, nil
}

func plainLeases(sl []storedLease) []store.Lease {
	ls := make([]store.Lease, len(sl))
	for i, l := range sl {
		ls[i] = l.Lease
	}
	store.SortLeases(ls)
	return ls
}

func (s *etcdStore) Leases(ctx context.Context, network string) ([]store.Lease, error) {
	k, err := s.keys(network)
	if err != nil {
		return nil, err
	}
	rctx, cancel := s.request(ctx)
	defer cancel()
	// Equivalent: etcdctl get --prefix $prefix/$network/subnets/
	resp, err := s.cli.Get(rctx, k.subnets, clientv3.WithPrefix())
	if err != nil {
		return nil, fail(ctx, fmt.Sprintf("leases of overlay network %q", network), err)
	}
	sl, err := decodeLeases(k.subnets, resp.Kvs)
	if err != nil {
		return nil, fmt.Errorf("leases of overlay network %q: %w", network, err)
	}
	return plainLeases(sl), nil
}

func (s *etcdStore) Acquire(ctx context.Context, network string, want store.Lease, ttl time.Duration) (store.Hold, error) {
	if err := store.ValidateAcquire(want, ttl); err != nil {
		return nil, err
	}
	k, err := s.keys(network)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("acquire a subnet of overlay network %q for %q", network, want.Host)
	if !s.t.Add() {
		return nil, fmt.Errorf("%s: etcd store is closed", what)
	}
	started := false
	defer func() {
		if !started {
			s.t.Done()
		}
	}()

	// Equivalent: etcdctl lease grant $ttl
	rctx, cancel := s.request(ctx)
	grant, err := s.cli.Grant(rctx, int64(math.Ceil(ttl.Seconds())))
	cancel()
	if err != nil {
		return nil, fail(ctx, what+": grant an etcd lease", err)
	}
	got, err := s.claim(ctx, k, want, grant.ID)
	if err != nil {
		return nil, fail(ctx, what, errors.Join(err, s.revoke(grant.ID)))
	}

	// The keep-alive, and the checks it drives, end with the Hold's
	// release, ctx or the store.
	kctx, kcancel := context.WithCancel(ctx)
	stopOnClose := context.AfterFunc(s.t.Context(), kcancel)
	// Equivalent: etcdctl lease keep-alive $id
	ka, err := s.cli.KeepAlive(kctx, grant.ID)
	if err != nil {
		stopOnClose()
		kcancel()
		return nil, fail(ctx, what+": keep the etcd lease alive", errors.Join(err, s.revoke(grant.ID)))
	}
	h := &etcdHold{
		s:     s,
		keys:  k,
		key:   k.subnets + store.SubnetKey(got.Subnet, '-'),
		id:    grant.ID,
		lease: got,
		ctx:   ctx,
		cancel: func() {
			stopOnClose()
			kcancel()
		},
		ttl:  time.Duration(grant.TTL) * time.Second,
		lost: make(chan struct{}),
		done: make(chan struct{}),
	}
	started = true
	go h.run(kctx, ka)
	return h, nil
}

// claim picks a subnet and writes want's lease there under the etcd lease
// id, and its last holder, retrying when another host changed that key
// between the read and the write.
func (s *etcdStore) claim(ctx context.Context, k netKeys, want store.Lease, id clientv3.LeaseID) (store.Lease, error) {
	for range acquireAttempts {
		rctx, cancel := s.request(ctx)
		// The config and every lease at one revision.
		resp, err := s.cli.Txn(rctx).Then(clientv3.OpGet(k.config), clientv3.OpGet(k.subnets, clientv3.WithPrefix())).Commit()
		cancel()
		if err != nil {
			return store.Lease{}, err
		}
		cfgKvs := resp.Responses[0].GetResponseRange().GetKvs()
		if len(cfgKvs) == 0 {
			return store.Lease{}, fmt.Errorf("no config stored at %s (EnsureNetwork first)", k.config)
		}
		n, err := store.DecodeNetwork(cfgKvs[0].Value)
		if err != nil {
			return store.Lease{}, fmt.Errorf("%s: %w", k.config, err)
		}
		live, err := decodeLeases(k.subnets, resp.Responses[1].GetResponseRange().GetKvs())
		if err != nil {
			return store.Lease{}, err
		}
		subnet, err := s.pick(ctx, k, n, want, plainLeases(live), resp.Header.Revision)
		if errors.Is(err, rpctypes.ErrCompacted) {
			continue // the history is gone at the leases' revision: read them again
		}
		if err != nil {
			return store.Lease{}, err
		}
		got := want
		got.Subnet = subnet
		key := k.subnets + store.SubnetKey(subnet, '-')
		var modRev int64 // 0: the key must not exist
		for _, l := range live {
			if l.key != key {
				continue
			}
			// The host's own: taken over as it was read, keeping the
			// attributes want does not know.
			modRev = l.Rev
			if got.Attrs, err = store.MergeAttrs(l.Attrs, want.Attrs); err != nil {
				return store.Lease{}, err
			}
		}
		val, err := json.Marshal(got)
		if err != nil {
			return store.Lease{}, err
		}
		histKey, histVal, err := k.lastHolder(got)
		if err != nil {
			return store.Lease{}, err
		}
		rctx, cancel = s.request(ctx)
		// Equivalent: etcdctl txn <<< 'mod("$key") = "$modRev"\n\nput --lease=$id $key $val\nput $histKey $histVal\n\n'
		tr, err := s.cli.Txn(rctx).
			If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
			Then(clientv3.OpPut(key, string(val), clientv3.WithLease(id)), clientv3.OpPut(histKey, histVal)).
			Commit()
		cancel()
		if err != nil {
			return store.Lease{}, err
		}
		if tr.Succeeded {
			// The put's ModRevision is the transaction's revision.
			got.Rev = tr.Header.Revision
			return got, nil
		}
	}
	return store.Lease{}, fmt.Errorf("lost the race for a subnet %d times in a row: %w", acquireAttempts, store.ErrConflict)
}

// pick chooses the subnet for want among the live leases read at
// revision rev (store.PickSubnet), reading the history as of rev only
// when the choice needs it.
func (s *etcdStore) pick(ctx context.Context, k netKeys, n store.Network, want store.Lease, live []store.Lease, rev int64) (netip.Prefix, error) {
	if subnet, ok := store.OwnOrWanted(n, want, live); ok {
		return subnet, nil
	}
	past, err := s.history(ctx, k.history, rev)
	if err != nil {
		return netip.Prefix{}, err
	}
	return store.PickSubnet(n, want, live, past)
}

// history reads the last holders under the prefix history as of
// revision rev, the leases' read. Acquire reads them only when the host
// neither holds a lease nor asks for a free subnet (store.OwnOrWanted),
// so that an agent's restart or re-acquisition, and the hosts that ask
// for a subnet, read the leases only: they are one per subnet ever
// leased, more keys than the leases. A last holder's Rev is its key's
// ModRevision.
//
// Equivalent: etcdctl get --prefix --rev=$rev $prefix/$network/history/
func (s *etcdStore) history(ctx context.Context, history string, rev int64) ([]store.LastHolder, error) {
	rctx, cancel := s.request(ctx)
	defer cancel()
	resp, err := s.cli.Get(rctx, history, clientv3.WithPrefix(), clientv3.WithRev(rev))
	if err != nil {
		return nil, err
	}
	out := make([]store.LastHolder, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		// The history is a preference, not a claim: a record that does
		// not decode must not stop a host from getting a subnet. A bad
		// key is passed over; a bad value still says the subnet was
		// held, and when, by someone no host can be.
		subnet, err := store.ParseSubnetKey(strings.TrimPrefix(key, history), '-')
		if err != nil {
			continue
		}
		h, err := store.DecodeLastHolder(kv.Value, subnet)
		if err != nil {
			h = store.LastHolder{Subnet: subnet}
		}
		h.Rev = kv.ModRevision
		out = append(out, h)
	}
	return out, nil
}

// revoke revokes the etcd lease id, deleting the keys attached to it. A
// lease already gone is not an error.
//
// Equivalent: etcdctl lease revoke $id
func (s *etcdStore) revoke(id clientv3.LeaseID) error {
	ctx, cancel := s.request(s.t.Context())
	defer cancel()
	_, err := s.cli.Revoke(ctx, id)
	if err == nil || errors.Is(err, rpctypes.ErrLeaseNotFound) {
		return nil
	}
	return fail(context.Background(), fmt.Sprintf("revoke etcd lease %x", int64(id)), err)
}

// Close closes the client. Holds stop being renewed and their etcd leases
// expire after their TTL; Watch channels close.
func (s *etcdStore) Close() error {
	s.closeOnce.Do(func() {
		s.t.Stop(func() {
			if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
				s.closeErr = fmt.Errorf("close etcd client: %w", err)
			}
		})
	})
	return s.closeErr
}
