package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/berth-cni/berth/internal/lab"
)

// etcdLab is a one-member etcd in the underlay namespace, where the agent
// reaches it over the underlay as a real host would, and the bench's own
// way to it: a unix socket (in the run's directory, so nothing listens in
// the machine's network namespace) forwarded to etcd from a thread in the
// underlay namespace. The forwarder counts the gRPC calls the bench makes,
// so that etcd's request counters, less the bench's, are the agent's.
type etcdLab struct {
	etcd *lab.Etcd
	ns   *lab.NS
	fwd  *forwarder
	sock string // the bench's endpoint
}

// etcdAddr is where etcd listens: the underlay gateway, as in the tests.
func etcdAddr() string { return lab.UnderlayGateway.Addr().String() }

// startEtcd starts etcd in u's namespace with its data and log under dir.
//
// Equivalent: ip netns exec $ul etcd --data-dir $dir/data --listen-client-urls http://192.168.77.1:2379 … &
func startEtcd(ctx context.Context, u *lab.Underlay, dir string) (*etcdLab, error) {
	e, err := lab.StartEtcd(ctx, lab.EtcdOptions{
		Dir: dir, NetNS: u.NS,
		ClientURL: "http://" + etcdAddr() + ":2379", PeerURL: "http://" + etcdAddr() + ":2380",
	})
	if err != nil {
		return nil, err
	}
	l := &etcdLab{etcd: e, ns: u.NS, sock: filepath.Join(dir, "etcd.sock")}
	if l.fwd, err = newForwarder(l.sock, u.NS, etcdAddr()+":2379"); err != nil {
		return nil, errors.Join(err, e.Stop())
	}
	return l, nil
}

// endpoint is the bench's etcd endpoint, for etcd.Config.Endpoints.
func (l *etcdLab) endpoint() string { return "unix://" + l.sock }

// agentEndpoint is the agent's: etcd over the underlay.
func (l *etcdLab) agentEndpoint() string { return l.etcd.Endpoint() }

// stop stops etcd and the forwarder.
func (l *etcdLab) stop() error {
	return errors.Join(l.etcd.Stop(), l.fwd.close())
}

// etcdCounts are etcd's request counters at one moment, and the bench's
// share of them.
type etcdCounts struct {
	started map[string]float64 // grpc_server_started_total by grpc_method
	bench   map[string]int     // the bench's own calls, by method
	mvccRng float64            // etcd_debugging_mvcc_range_total: ranges, those inside Txns too
}

// counts reads etcd's /metrics (from a thread in its namespace) and the
// forwarder's counts.
//
// Equivalent: ip netns exec $ul curl -s http://192.168.77.1:2379/metrics
func (l *etcdLab) counts(ctx context.Context) (etcdCounts, error) {
	c := etcdCounts{started: map[string]float64{}, bench: l.fwd.calls()}
	body, err := httpGet(ctx, l.ns, "http://"+etcdAddr()+":2379/metrics")
	if err != nil {
		return c, err
	}
	for line := range strings.Lines(body) {
		line = strings.TrimSpace(line)
		series, val, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(val), 64)
		if err != nil {
			continue
		}
		switch name, _, _ := strings.Cut(series, "{"); name {
		case "grpc_server_started_total":
			c.started[label(series, "grpc_method")] += v
		case "etcd_debugging_mvcc_range_total":
			c.mvccRng += v
		}
	}
	if len(c.started) == 0 {
		return c, errors.New("etcd /metrics: no grpc_server_started_total series")
	}
	return c, nil
}

// label returns the value of label name in a Prometheus series.
func label(series, name string) string {
	_, rest, ok := strings.Cut(series, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// httpGet GETs url from a thread in ns and returns the body.
func httpGet(ctx context.Context, ns *lab.NS, url string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), err
}

// forwarder accepts on a unix socket and forwards each connection to a
// TCP address dialled from a thread in ns. It reads the HTTP/2 frames the
// clients send (gRPC over h2c) and counts the requests by method: the
// :path of each HEADERS frame that opens a stream.
type forwarder struct {
	ln   net.Listener
	ns   *lab.NS
	addr string
	wg   sync.WaitGroup

	mu    sync.Mutex
	n     map[string]int
	conns map[net.Conn]bool
}

func newForwarder(sock string, ns *lab.NS, addr string) (*forwarder, error) {
	ln, err := net.Listen("unix", sock)
	if err != nil {
		return nil, err
	}
	f := &forwarder{ln: ln, ns: ns, addr: addr, n: map[string]int{}, conns: map[net.Conn]bool{}}
	f.wg.Go(f.accept)
	return f, nil
}

func (f *forwarder) accept() {
	for {
		c, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Go(func() { f.serve(c) })
	}
}

// serve forwards one connection both ways until either side closes.
func (f *forwarder) serve(c net.Conn) {
	var up net.Conn
	err := f.ns.Do(func() error {
		var err error
		up, err = net.DialTimeout("tcp", f.addr, 5*time.Second)
		return err
	})
	if err != nil || !f.track(c, up) {
		c.Close()
		if up != nil {
			up.Close()
		}
		return
	}
	pr, pw := io.Pipe()
	var wg sync.WaitGroup
	wg.Go(func() { f.count(pr) })
	wg.Go(func() {
		_, _ = io.Copy(up, io.TeeReader(c, pw))
		pw.Close()
		up.Close()
		c.Close()
	})
	wg.Go(func() {
		_, _ = io.Copy(c, up)
		up.Close()
		c.Close()
	})
	wg.Wait()
	f.mu.Lock()
	delete(f.conns, c)
	delete(f.conns, up)
	f.mu.Unlock()
}

// track registers a connection pair for close; false once closed.
func (f *forwarder) track(c, up net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns == nil {
		return false
	}
	f.conns[c], f.conns[up] = true, true
	return true
}

// count parses the client's side of one HTTP/2 connection and counts the
// requests by method; on a parse error it counts "?" and only drains.
func (f *forwarder) count(r io.Reader) {
	defer io.Copy(io.Discard, r)
	br := bufio.NewReader(r)
	preface := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(br, preface); err != nil || string(preface) != http2.ClientPreface {
		f.add("?")
		return
	}
	fr := http2.NewFramer(nil, br)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	fr.MaxHeaderListSize = 1 << 20
	for {
		frame, err := fr.ReadFrame()
		if se := (http2.StreamError{}); errors.As(err, &se) {
			continue
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrClosedPipe) {
				f.add("?")
			}
			return
		}
		if h, ok := frame.(*http2.MetaHeadersFrame); ok {
			if p := h.PseudoValue("path"); p != "" {
				f.add(path.Base(p))
			}
		}
	}
}

func (f *forwarder) add(method string) {
	f.mu.Lock()
	f.n[method]++
	f.mu.Unlock()
}

// calls returns a copy of the counts so far.
func (f *forwarder) calls() map[string]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string]int, len(f.n))
	for k, v := range f.n {
		out[k] = v
	}
	return out
}

// close stops accepting, closes every forwarded connection and waits.
func (f *forwarder) close() error {
	err := f.ln.Close()
	f.mu.Lock()
	for c := range f.conns {
		c.Close()
	}
	f.conns = nil
	f.mu.Unlock()
	f.wg.Wait()
	return err
}
