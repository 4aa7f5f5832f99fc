package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"time"

	"github.com/berth-cni/berth/pkg/overlay/store"
	"github.com/berth-cni/berth/pkg/overlay/store/etcd"
)

// etcdFlags are the etcd store's flags as given.
type etcdFlags struct {
	endpoints, prefix  string
	ca, cert, key      string // PEM files
	user, passwordFile string
}

func (f *etcdFlags) register(set *flag.FlagSet) {
	set.StringVar(&f.endpoints, "etcd-endpoints", "", "etcd endpoints, comma-separated (https:// for TLS)")
	set.StringVar(&f.prefix, "etcd-prefix", etcd.DefaultPrefix, "etcd key prefix")
	set.StringVar(&f.ca, "etcd-ca", "", "PEM CA bundle that verifies the etcd servers (default: the system's; implies TLS)")
	set.StringVar(&f.cert, "etcd-cert", "", "PEM client certificate for etcd (with -etcd-key; implies TLS)")
	set.StringVar(&f.key, "etcd-key", "", "PEM private key of -etcd-cert")
	set.StringVar(&f.user, "etcd-user", "", "etcd user (with -etcd-password-file)")
	set.StringVar(&f.passwordFile, "etcd-password-file", "", "file whose first line is -etcd-user's password")
}

// config checks f and reads its files into an etcd.Config. TLS is on when
// a TLS flag is given or an endpoint is https://, with at least TLS 1.2;
// then every endpoint must be https:// (or without a scheme: clientv3
// dials every endpoint with the first one's credentials). Warnings (a
// secret file others can read, a password sent unencrypted) go to warn.
// No error or warning carries a secret.
func (f etcdFlags) config(warn io.Writer) (etcd.Config, error) {
	c := etcd.Config{Prefix: f.prefix}
	for _, e := range strings.Split(f.endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			c.Endpoints = append(c.Endpoints, e)
		}
	}
	if len(c.Endpoints) == 0 {
		return etcd.Config{}, errors.New("-etcd-endpoints: the etcd store needs at least one endpoint")
	}
	switch {
	case f.cert != "" && f.key == "":
		return etcd.Config{}, fmt.Errorf("-etcd-cert %q: needs -etcd-key, the certificate's private key", f.cert)
	case f.key != "" && f.cert == "":
		return etcd.Config{}, fmt.Errorf("-etcd-key %q: needs -etcd-cert, the certificate it is the key of", f.key)
	case f.user != "" && f.passwordFile == "":
		return etcd.Config{}, fmt.Errorf("-etcd-user %q: needs -etcd-password-file", f.user)
	case f.passwordFile != "" && f.user == "":
		return etcd.Config{}, fmt.Errorf("-etcd-password-file %q: needs -etcd-user", f.passwordFile)
	}
	secure, err := f.secure(c.Endpoints)
	if err != nil {
		return etcd.Config{}, err
	}
	if secure {
		if c.TLS, err = f.tlsConfig(warn); err != nil {
			return etcd.Config{}, err
		}
	}
	if f.user != "" {
		if c.Password, err = readPassword(f.passwordFile, warn); err != nil {
			return etcd.Config{}, err
		}
		c.Username = f.user
		if !secure {
			fmt.Fprintf(warn, "berth-overlayd: warning: -etcd-user %q over plain http: the password crosses the network unencrypted (use https:// endpoints)\n", f.user)
		}
	}
	return c, nil
}

// secure says whether the endpoints are dialled with TLS, and refuses a
// mix of plain and TLS endpoints, or plain ones with a TLS flag.
func (f etcdFlags) secure(endpoints []string) (bool, error) {
	var plain, tlsEndpoint string // the first of each
	for _, e := range endpoints {
		scheme, _, ok := strings.Cut(e, "://")
		if !ok {
			continue // host:port: dialled as the others are
		}
		switch strings.ToLower(scheme) {
		case "http", "unix":
			plain = firstOf(plain, e)
		case "https", "unixs":
			tlsEndpoint = firstOf(tlsEndpoint, e)
		default:
			return false, fmt.Errorf("-etcd-endpoints %q: endpoint %q: scheme %q is not http or https", f.endpoints, e, scheme)
		}
	}
	var tlsFlag string
	for _, fl := range []struct{ name, val string }{{"-etcd-ca", f.ca}, {"-etcd-cert", f.cert}} {
		if fl.val != "" && tlsFlag == "" {
			tlsFlag = fmt.Sprintf("%s %q", fl.name, fl.val)
		}
	}
	switch {
	case plain != "" && tlsEndpoint != "":
		return false, fmt.Errorf("-etcd-endpoints %q: mixes plain %q and TLS %q: use https:// for all", f.endpoints, plain, tlsEndpoint)
	case plain != "" && tlsFlag != "":
		return false, fmt.Errorf("-etcd-endpoints %q: %q is plain http, but %s asks for TLS: use https://", f.endpoints, plain, tlsFlag)
	}
	return tlsEndpoint != "" || tlsFlag != "", nil
}

// firstOf returns the first non-empty of a and b.
func firstOf(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// tlsConfig reads the CA bundle and the client key pair. Without -etcd-ca
// the servers are verified against the system's pool.
func (f etcdFlags) tlsConfig(warn io.Writer) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pem, err := readFlagFile("-etcd-ca", f.ca)
		if err != nil {
			return nil, err
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-etcd-ca %q: no PEM certificate in the file", f.ca)
		}
	}
	if f.cert != "" {
		certPEM, err := readFlagFile("-etcd-cert", f.cert)
		if err != nil {
			return nil, err
		}
		keyPEM, err := readFlagFile("-etcd-key", f.key)
		if err != nil {
			return nil, err
		}
		warnReadable(warn, "-etcd-key", f.key)
		// crypto/tls's errors name what is wrong, never the key's bytes.
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			return nil, fmt.Errorf("-etcd-cert %q, -etcd-key %q: %w", f.cert, f.key, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}

// readPassword returns the first line of file, without its line ending.
func readPassword(file string, warn io.Writer) (string, error) {
	b, err := readFlagFile("-etcd-password-file", file)
	if err != nil {
		return "", err
	}
	warnReadable(warn, "-etcd-password-file", file)
	line, _, _ := strings.Cut(string(b), "\n")
	line = strings.TrimSuffix(line, "\r")
	if line == "" {
		return "", fmt.Errorf("-etcd-password-file %q: the first line, the password, is empty", file)
	}
	return line, nil
}

// readFlagFile reads the file a flag names; an error names the flag, the
// file and the cause.
func readFlagFile(name, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		err = pe.Err // the path is in the message already
	}
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", name, file, err)
	}
	return b, nil
}

// warnReadable warns when group or others may read a secret's file.
func warnReadable(warn io.Writer, name, file string) {
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm()&0o044 == 0 {
		return
	}
	fmt.Fprintf(warn, "berth-overlayd: warning: %s %q is readable by group or others (mode %04o): chmod 600 it\n", name, file, fi.Mode().Perm())
}

// openEtcd connects to etcd, waiting while it is unreachable: with a user,
// clientv3 authenticates in etcd.New, so an etcd down when the agent
// starts would fail New rather than the agent's first request, which the
// agent retries. Anything else (a wrong password) is returned.
func openEtcd(ctx context.Context, cfg etcd.Config, stderr io.Writer) (store.Store, error) {
	const maxDelay = 5 * time.Second
	delay := 250 * time.Millisecond
	for {
		st, err := etcd.New(cfg)
		if !errors.Is(err, store.ErrUnavailable) {
			return st, err
		}
		fmt.Fprintf(stderr, "berth-overlayd: %v (retrying in %v)\n", err, delay)
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, maxDelay)
	}
}
