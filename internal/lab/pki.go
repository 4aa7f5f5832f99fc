package lab

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestClientCN is the common name of TestPKI's client certificate. etcd
// with --client-cert-auth and auth enabled takes it as the user of a
// request that carries no token.
const TestClientCN = "berth"

// TestPKI is a throwaway certificate authority and the certificates a TLS
// test of etcd needs, as PEM files (mode 0600) in a directory of the
// test's: ECDSA P-256, valid from an hour ago for a day.
type TestPKI struct {
	CAFile                 string // the CA: etcd's --trusted-ca-file, the agent's -etcd-ca
	ServerCert, ServerKey  string // etcd's: for 127.0.0.1, localhost and the given addresses
	ClientCert, ClientKey  string // a client's, CN TestClientCN
	OtherCAFile, OtherCert string // a second CA, and a client certificate it signed: both wrong here
	OtherKey               string // OtherCert's key

	pool   *x509.CertPool
	client tls.Certificate
}

// NewTestPKI makes a TestPKI in a fresh tb.TempDir(); the server
// certificate is valid for addrs besides 127.0.0.1 and localhost.
func NewTestPKI(tb testing.TB, addrs ...netip.Addr) *TestPKI {
	tb.Helper()
	dir := tb.TempDir()
	p := &TestPKI{}
	ca := newTestCA(tb, "berth test CA")
	p.CAFile = ca.write(tb, dir, "ca")
	other := newTestCA(tb, "some other CA")
	p.OtherCAFile = other.write(tb, dir, "other-ca")

	ips := []net.IP{net.IPv4(127, 0, 0, 1)}
	for _, a := range addrs {
		ips = append(ips, a.AsSlice())
	}
	server := ca.issue(tb, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcd"},
		IPAddresses: ips,
		DNSNames:    []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	p.ServerCert, p.ServerKey = server.write(tb, dir, "server"), server.keyFile
	client := ca.issue(tb, &x509.Certificate{
		Subject:     pkix.Name{CommonName: TestClientCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p.ClientCert, p.ClientKey = client.write(tb, dir, "client"), client.keyFile
	stranger := other.issue(tb, &x509.Certificate{
		Subject:     pkix.Name{CommonName: TestClientCN},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	p.OtherCert, p.OtherKey = stranger.write(tb, dir, "other-client"), stranger.keyFile

	p.pool = x509.NewCertPool()
	p.pool.AddCert(ca.cert)
	p.client = tls.Certificate{Certificate: [][]byte{client.cert.Raw}, PrivateKey: client.key, Leaf: client.cert}
	return p
}

// ClientTLS is a client's TLS config: the CA verifies the server, the
// client certificate is offered.
func (p *TestPKI) ClientTLS() *tls.Config {
	return &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{p.client}, MinVersion: tls.VersionTLS12}
}

// testCert is a certificate with its key; for a CA, the issuer of others.
type testCert struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	keyFile string // set by write
}

func newTestCA(tb testing.TB, name string) *testCert {
	tb.Helper()
	tmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: name},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	return sign(tb, tmpl, nil)
}

// issue signs tmpl with c.
func (c *testCert) issue(tb testing.TB, tmpl *x509.Certificate) *testCert {
	tb.Helper()
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	return sign(tb, tmpl, c)
}

// sign makes a key for tmpl and signs it with parent, or with that key
// when parent is nil (a self-signed CA).
func sign(tb testing.TB, tmpl *x509.Certificate, parent *testCert) *testCert {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		tb.Fatal(err)
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	issuer, signer := tmpl, key
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, &key.PublicKey, signer)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	return &testCert{cert: cert, key: key}
}

// write puts c in dir/name.pem and its key in dir/name-key.pem (c.keyFile)
// and returns the certificate's path.
func (c *testCert) write(tb testing.TB, dir, name string) string {
	tb.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(c.key)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
	for file, block := range map[string]*pem.Block{
		certFile: {Type: "CERTIFICATE", Bytes: c.cert.Raw},
		keyFile:  {Type: "PRIVATE KEY", Bytes: der},
	} {
		if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	c.keyFile = keyFile
	return certFile
}
