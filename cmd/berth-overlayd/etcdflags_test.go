package main

import (
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/berth-cni/berth/internal/lab"
)

const testPassword = "pa55-w0rd"

// etcdArgs is a valid command line for the etcd store with extra flags.
func etcdArgs(extra ...string) []string {
	return append([]string{"-network", "ov", "-cidr", "10.244.0.0/16", "-store", "etcd"}, extra...)
}

// writeFile writes body to dir/name with mode perm and returns its path.
func writeFile(t *testing.T, dir, name, body string, perm os.FileMode) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(body), perm); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, perm); err != nil { // past the umask
		t.Fatal(err)
	}
	return p
}

func TestParseFlagsEtcdTLS(t *testing.T) {
	t.Parallel()
	pki := lab.NewTestPKI(t)
	dir := t.TempDir()
	pw := writeFile(t, dir, "pw", testPassword+"\nthe second line is not the password\n", 0o600)
	crlf := writeFile(t, dir, "pw-crlf", testPassword+"\r\n", 0o400)

	for _, tc := range []struct {
		name     string
		args     []string
		ca, cert bool // RootCAs set; a client certificate
		user     string
	}{
		{name: "https without flags: the system pool", args: []string{"-etcd-endpoints", "https://e1:2379,https://e2:2379"}},
		{name: "a CA implies TLS for host:port", args: []string{"-etcd-endpoints", "e1:2379", "-etcd-ca", pki.CAFile}, ca: true},
		{name: "a client certificate alone", args: []string{"-etcd-endpoints", "https://e1:2379", "-etcd-cert", pki.ClientCert, "-etcd-key", pki.ClientKey}, cert: true},
		{name: "everything", args: []string{
			"-etcd-endpoints", "HTTPS://e1:2379", "-etcd-ca", pki.CAFile, "-etcd-cert", pki.ClientCert, "-etcd-key", pki.ClientKey,
			"-etcd-user", "berth", "-etcd-password-file", pw,
		}, ca: true, cert: true, user: "berth"},
		{name: "a password file with CRLF", args: []string{"-etcd-endpoints", "https://e1:2379", "-etcd-user", "berth", "-etcd-password-file", crlf}, user: "berth"},
	} {
		var stderr strings.Builder
		o, err := parseFlags(etcdArgs(tc.args...), &stderr, hostname)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if stderr.Len() > 0 {
			t.Errorf("%s: stderr %q; want nothing", tc.name, stderr.String())
		}
		c := o.etcd
		if c.TLS == nil {
			t.Errorf("%s: no TLS", tc.name)
			continue
		}
		if c.TLS.MinVersion != tls.VersionTLS12 {
			t.Errorf("%s: MinVersion %#x; want TLS 1.2", tc.name, c.TLS.MinVersion)
		}
		if got := c.TLS.RootCAs != nil; got != tc.ca {
			t.Errorf("%s: RootCAs set %v; want %v (nil is the system pool)", tc.name, got, tc.ca)
		}
		if got := len(c.TLS.Certificates) == 1; got != tc.cert {
			t.Errorf("%s: %d client certificates; want one: %v", tc.name, len(c.TLS.Certificates), tc.cert)
		}
		wantPW := ""
		if tc.user != "" {
			wantPW = testPassword
		}
		if c.Username != tc.user || c.Password != wantPW {
			t.Errorf("%s: user %q, password %q; want %q, %q", tc.name, c.Username, c.Password, tc.user, wantPW)
		}
	}

	o, err := parseFlags(etcdArgs("-etcd-endpoints", "http://e1:2379"), &strings.Builder{}, hostname)
	if err != nil || o.etcd.TLS != nil || o.etcd.Username != "" {
		t.Errorf("plain http: %+v, %v; want no TLS, no user", o.etcd, err)
	}
}

// A secret readable by group or others, and a password over plain http,
// are warned about, naming the flag and the file but never the secret.
func TestParseFlagsEtcdWarnings(t *testing.T) {
	t.Parallel()
	pki := lab.NewTestPKI(t)
	dir := t.TempDir()
	pw := writeFile(t, dir, "pw", testPassword+"\n", 0o644)
	key := writeFile(t, dir, "key.pem", mustRead(t, pki.ClientKey), 0o640)
	var stderr strings.Builder
	if _, err := parseFlags(etcdArgs("-etcd-endpoints", "https://e1:2379", "-etcd-cert", pki.ClientCert, "-etcd-key", key,
		"-etcd-user", "berth", "-etcd-password-file", pw), &stderr, hostname); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`warning: -etcd-password-file "` + pw + `" is readable by group or others (mode 0644)`,
		`warning: -etcd-key "` + key + `" is readable by group or others (mode 0640)`,
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr %q; want it to contain %q", stderr.String(), want)
		}
	}

	stderr.Reset()
	pw600 := writeFile(t, dir, "pw600", testPassword+"\n", 0o600)
	if _, err := parseFlags(etcdArgs("-etcd-endpoints", "http://e1:2379", "-etcd-user", "berth", "-etcd-password-file", pw600), &stderr, hostname); err != nil {
		t.Fatal(err)
	}
	if want := `warning: -etcd-user "berth" over plain http`; !strings.Contains(stderr.String(), want) || strings.Contains(stderr.String(), "readable") {
		t.Errorf("stderr %q; want only %q", stderr.String(), want)
	}
	if strings.Contains(stderr.String(), testPassword) {
		t.Errorf("stderr %q carries the password", stderr.String())
	}
}

func TestParseFlagsEtcdErrors(t *testing.T) {
	t.Parallel()
	pki := lab.NewTestPKI(t)
	dir := t.TempDir()
	pw := writeFile(t, dir, "pw", testPassword+"\n", 0o600)
	empty := writeFile(t, dir, "empty", "\nnot the first line\n", 0o600)
	notPEM := writeFile(t, dir, "not.pem", "hello\n", 0o600)
	missing := filepath.Join(dir, "missing.pem")
	https := []string{"-etcd-endpoints", "https://e1:2379"}
	pair := []string{"-etcd-cert", pki.ClientCert, "-etcd-key", pki.ClientKey}
	q := func(flag, val string) string { return flag + ` "` + val + `"` }

	for _, tc := range []struct {
		args []string
		want []string // each in the error
	}{
		{[]string{"-etcd-endpoints", "https://e1:2379", "-etcd-cert", pki.ClientCert}, []string{q("-etcd-cert", pki.ClientCert), "needs -etcd-key"}},
		{[]string{"-etcd-endpoints", "https://e1:2379", "-etcd-key", pki.ClientKey}, []string{q("-etcd-key", pki.ClientKey), "needs -etcd-cert"}},
		{[]string{"-etcd-endpoints", "https://e1:2379", "-etcd-user", "berth"}, []string{q("-etcd-user", "berth"), "needs -etcd-password-file"}},
		{[]string{"-etcd-endpoints", "https://e1:2379", "-etcd-password-file", pw}, []string{q("-etcd-password-file", pw), "needs -etcd-user"}},
		{[]string{"-etcd-endpoints", "http://e1:2379", "-etcd-ca", pki.CAFile}, []string{q("-etcd-endpoints", "http://e1:2379"), "plain http", q("-etcd-ca", pki.CAFile)}},
		{append([]string{"-etcd-endpoints", "e1:2379,http://e2:2379"}, pair...), []string{`"http://e2:2379" is plain http`, q("-etcd-cert", pki.ClientCert)}},
		{[]string{"-etcd-endpoints", "https://e1:2379,http://e2:2379"}, []string{q("-etcd-endpoints", "https://e1:2379,http://e2:2379"), "mixes"}},
		{[]string{"-etcd-endpoints", "ftp://e1:2379"}, []string{q("-etcd-endpoints", "ftp://e1:2379"), `scheme "ftp"`}},
		{append(https, "-etcd-ca", missing), []string{q("-etcd-ca", missing), "no such file or directory"}},
		{append(https, "-etcd-ca", notPEM), []string{q("-etcd-ca", notPEM), "no PEM certificate"}},
		{append(https, "-etcd-ca", pki.ClientKey), []string{q("-etcd-ca", pki.ClientKey), "no PEM certificate"}},
		{append(https, "-etcd-cert", missing, "-etcd-key", pki.ClientKey), []string{q("-etcd-cert", missing), "no such file"}},
		{append(https, "-etcd-cert", pki.ClientCert, "-etcd-key", missing), []string{q("-etcd-key", missing), "no such file"}},
		{append(https, "-etcd-cert", pki.ClientCert, "-etcd-key", pki.OtherKey), []string{q("-etcd-cert", pki.ClientCert), q("-etcd-key", pki.OtherKey), "private key does not match public key"}},
		{append(https, "-etcd-cert", notPEM, "-etcd-key", pki.ClientKey), []string{q("-etcd-cert", notPEM), "certificate"}},
		{append(https, "-etcd-cert", pki.ClientCert, "-etcd-key", pki.ClientCert), []string{q("-etcd-key", pki.ClientCert)}},
		{append(https, "-etcd-user", "berth", "-etcd-password-file", missing), []string{q("-etcd-password-file", missing), "no such file"}},
		{append(https, "-etcd-user", "berth", "-etcd-password-file", empty), []string{q("-etcd-password-file", empty), "empty"}},
	} {
		_, err := parseFlags(etcdArgs(tc.args...), &strings.Builder{}, hostname)
		if err == nil {
			t.Errorf("%v: no error; want %q", tc.args, tc.want)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%v: err %q; want it to contain %q", tc.args, err, w)
			}
		}
		for _, secret := range []string{testPassword, "PRIVATE KEY", mustRead(t, pki.ClientKey)[30:60]} {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%v: err %q carries a secret", tc.args, err)
			}
		}
	}
}

func mustRead(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
