package lab

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// EtcdUser is a user EnableAuth adds, with a role of its own name that may
// read and write the keys under Prefix.
type EtcdUser struct {
	Name, Password, Prefix string
}

// EnableAuth turns etcd's authentication on through clientv3's Auth API
// (dialling in NetNS when set, over tlsc when not nil), the way an
// operator does with etcdctl: a user root with the root role, each of
// users with its role, then auth enable.
//
// Equivalent: etcdctl user add root; etcdctl user grant-role root root; and per user:
// etcdctl role add $name; etcdctl role grant-permission $name readwrite --prefix=true $prefix;
// etcdctl user add $name; etcdctl user grant-role $name $name; then etcdctl auth enable
func (e *Etcd) EnableAuth(ctx context.Context, tlsc *tls.Config, rootPassword string, users ...EtcdUser) error {
	cfg := clientv3.Config{Endpoints: []string{e.Endpoint()}, TLS: tlsc, DialTimeout: 5 * time.Second, Logger: zap.NewNop()}
	if ns := e.opts.NetNS; ns != nil {
		cfg.DialOptions = []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return ns.Dial(ctx, "tcp", addr)
		})}
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		return fmt.Errorf("etcd enable auth: %w", err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	type step struct {
		what string
		do   func() error
	}
	steps := []step{
		{"user add root", func() error { _, err := c.UserAdd(ctx, "root", rootPassword); return err }},
		{"user grant-role root root", func() error { _, err := c.UserGrantRole(ctx, "root", "root"); return err }},
	}
	for _, u := range users {
		steps = append(steps,
			step{"role add " + u.Name, func() error { _, err := c.RoleAdd(ctx, u.Name); return err }},
			step{"role grant-permission " + u.Name + " readwrite --prefix=true " + u.Prefix, func() error {
				_, err := c.RoleGrantPermission(ctx, u.Name, u.Prefix, clientv3.GetPrefixRangeEnd(u.Prefix), clientv3.PermissionType(clientv3.PermReadWrite))
				return err
			}},
			step{"user add " + u.Name, func() error { _, err := c.UserAdd(ctx, u.Name, u.Password); return err }},
			step{"user grant-role " + u.Name + " " + u.Name, func() error { _, err := c.UserGrantRole(ctx, u.Name, u.Name); return err }},
		)
	}
	steps = append(steps, step{"auth enable", func() error { _, err := c.AuthEnable(ctx); return err }})
	for _, s := range steps {
		if err := s.do(); err != nil {
			return fmt.Errorf("etcd enable auth: %s: %w", s.what, err)
		}
	}
	return nil
}
