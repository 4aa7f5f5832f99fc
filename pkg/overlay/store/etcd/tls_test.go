package etcd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/berth-cni/berth/internal/lab"
	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/storetest"
)

// startTLSEtcd runs etcd on 127.0.0.1 serving its clients over TLS alone,
// with a certificate of pki's CA, and requiring client certificates of
// that CA.
func startTLSEtcd(t *testing.T, pki *lab.TestPKI) *lab.Etcd {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), storetest.Timeout)
	defer cancel()
	e := lab.StartTestEtcd(t, ctx, lab.EtcdOptions{
		CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		ClientCAFile: pki.CAFile, ClientCertAuth: true, ProbeTLS: pki.ClientTLS(),
	})
	if !strings.HasPrefix(e.Endpoint(), "https://") {
		t.Fatalf("endpoint %s; want https://", e.Endpoint())
	}
	return e
}

// openStore is New(cfg) with short timeouts, closed in t.Cleanup.
func openStore(t *testing.T, cfg Config) (store.Store, error) {
	t.Helper()
	cfg.DialTimeout, cfg.RequestTimeout = 2*time.Second, 2*time.Second
	s, err := New(cfg)
	if err == nil {
		t.Cleanup(func() {
			if cerr := s.Close(); cerr != nil {
				t.Errorf("close etcd store: %v", cerr)
			}
		})
	}
	return s, err
}

// exercise makes the calls an agent makes: store the network, lease a
// subnet, list the leases, watch them, release.
func exercise(t *testing.T, s store.Store) {
	t.Helper()
	n := storetest.Ensure(t, s, storetest.Network(t))
	h := storetest.Acquire(t, s, n.Name, storetest.Host(1), 5*time.Second)
	if ls := storetest.Leases(t, s, n.Name); len(ls) != 1 || ls[0].Host != storetest.Host(1).Host {
		t.Errorf("leases %+v; want host 1's", ls)
	}
	w, _ := storetest.StartWatch(t, s, n.Name)
	w.WaitState("the watch sees host 1's lease", func(ls []store.Lease) bool { return len(ls) == 1 })
	if err := h.Release(storetest.Ctx(t)); err != nil {
		t.Errorf("release: %v", err)
	}
}

// Over TLS with a client certificate of the CA the store works. Without
// a client certificate, with one of another CA, or verifying etcd with
// another CA (or the system's pool), every call fails with
// store.ErrUnavailable naming the TLS failure (keepDialCause), which is
// what the agent logs and shows on /healthz while it retries.
func TestEtcdTLS(t *testing.T) {
	t.Parallel()
	pki := lab.NewTestPKI(t)
	e := startTLSEtcd(t, pki)
	s, err := openStore(t, Config{Endpoints: []string{e.Endpoint()}, Prefix: testPrefix, TLS: pki.ClientTLS()})
	if err != nil {
		t.Fatal(err)
	}
	exercise(t, s)

	good := pki.ClientTLS()
	otherCA := x509.NewCertPool()
	pem, err := os.ReadFile(pki.OtherCAFile)
	if err != nil || !otherCA.AppendCertsFromPEM(pem) {
		t.Fatalf("read %s: %v", pki.OtherCAFile, err)
	}
	stranger, err := tls.LoadX509KeyPair(pki.OtherCert, pki.OtherKey)
	if err != nil {
		t.Fatal(err)
	}
	// etcd refuses a client certificate after a TLS 1.3 handshake that
	// the client thinks complete: the client reads the alert, or, when its
	// first write meets the closed connection before, only that.
	refused := []string{"remote error: tls: bad certificate", "write: broken pipe", "connection reset by peer"}
	unknownCA := []string{"x509: certificate signed by unknown authority"}
	for _, tc := range []struct {
		name string
		tls  *tls.Config
		want []string // one of them in the error, besides store.ErrUnavailable
	}{
		{"no client certificate", &tls.Config{RootCAs: good.RootCAs, MinVersion: tls.VersionTLS12}, refused},
		{"a client certificate of another CA", &tls.Config{RootCAs: good.RootCAs, Certificates: []tls.Certificate{stranger}, MinVersion: tls.VersionTLS12}, refused},
		{"the wrong CA", &tls.Config{RootCAs: otherCA, Certificates: good.Certificates, MinVersion: tls.VersionTLS12}, unknownCA},
		{"the system pool", &tls.Config{Certificates: good.Certificates, MinVersion: tls.VersionTLS12}, unknownCA},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, err := openStore(t, Config{Endpoints: []string{e.Endpoint()}, Prefix: testPrefix, TLS: tc.tls})
			if err != nil {
				t.Fatalf("New: %v; want the calls to fail, not New", err)
			}
			_, err = s.EnsureNetwork(storetest.Ctx(t), storetest.Network(t))
			t.Logf("EnsureNetwork: %v", err)
			if !errors.Is(err, store.ErrUnavailable) || !slices.ContainsFunc(tc.want, func(w string) bool { return strings.Contains(err.Error(), w) }) {
				t.Errorf("EnsureNetwork: %v; want store.ErrUnavailable and one of %q", err, tc.want)
			}
		})
	}
}

// With authentication on (over TLS with client certificates): the right
// password passes the whole store contract under the default prefix,
// which the README's role allows; a wrong one fails New naming the
// authentication; a prefix outside the role is denied; the client
// certificate alone is its CN's user. etcd restarted
// (its simple tokens are in memory, so the client's is void) the store
// works again: the client fetches a new token.
func TestEtcdAuth(t *testing.T) {
	t.Parallel()
	pki := lab.NewTestPKI(t)
	e := startTLSEtcd(t, pki)
	const password = "s3cret-pa55"
	// The README's role: read and write under /berth/.
	if err := e.EnableAuth(storetest.Ctx(t), pki.ClientTLS(), "root-"+password,
		lab.EtcdUser{Name: lab.TestClientCN, Password: password, Prefix: "/berth/"}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{Endpoints: []string{e.Endpoint()}, TLS: pki.ClientTLS(), Username: lab.TestClientCN, Password: password}

	storetest.Run(t, 2*time.Second, func(t *testing.T) store.Store {
		s, err := openStore(t, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return s
	})

	wrong := cfg
	wrong.Password = "not-" + password
	_, err := openStore(t, wrong)
	t.Logf("a wrong password: %v", err)
	if err == nil || !strings.Contains(err.Error(), "authentication failed") || errors.Is(err, store.ErrUnavailable) {
		t.Errorf("New with a wrong password: %v; want etcd's authentication failed, not ErrUnavailable", err)
	}
	if err != nil && strings.Contains(err.Error(), password) {
		t.Errorf("the error carries the password: %v", err)
	}

	outside := cfg
	outside.Prefix = "/elsewhere"
	s, err := openStore(t, outside)
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.EnsureNetwork(storetest.Ctx(t), storetest.Network(t))
	t.Logf("outside the role's prefix: %v", err)
	if err == nil || !strings.Contains(err.Error(), "permission denied") {
		t.Errorf("EnsureNetwork under /elsewhere: %v; want permission denied", err)
	}

	// No password: etcd takes the user from the client certificate's CN.
	certOnly := cfg
	certOnly.Username, certOnly.Password = "", ""
	if s, err = openStore(t, certOnly); err != nil {
		t.Fatal(err)
	}
	storetest.Ensure(t, s, storetest.Network(t))

	s, err = openStore(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	n := storetest.Ensure(t, s, storetest.Network(t))
	if err := e.Restart(storetest.Ctx(t)); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, 10*time.Second, "the store works after etcd's restart", func() string {
		if _, err := s.Leases(storetest.Ctx(t), n.Name); err != nil {
			return err.Error()
		}
		return ""
	})
	exercise(t, s)
}
