package etcd

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// keepDialCause is a gRPC unary interceptor, inside clientv3's retries,
// that keeps why a request found no connection. A request that waited
// out its deadline for one fails with gRPC's DeadlineExceeded carrying
// the last connection error ("latest balancer error: connection error:
// … tls: failed to verify certificate: x509: certificate signed by
// unknown authority"), but clientv3 replaces any DeadlineExceeded with
// the bare context.DeadlineExceeded once the context has ended, and a
// wrong CA or a refused client certificate read only "context deadline
// exceeded". This returns a plain error instead, which clientv3 passes
// through and which still wraps context.DeadlineExceeded (so the store
// reports store.ErrUnavailable, as for any unreachable cluster).
func keepDialCause(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	err := invoker(ctx, method, req, reply, cc, opts...)
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.DeadlineExceeded || ctx.Err() != context.DeadlineExceeded {
		return err
	}
	msg := st.Message()
	if msg == "" || strings.HasPrefix(msg, context.DeadlineExceeded.Error()) {
		return err // nothing more than the deadline
	}
	return deadlineError(msg)
}

// deadlineError is context.DeadlineExceeded with gRPC's account of it.
type deadlineError string

func (e deadlineError) Error() string { return context.DeadlineExceeded.Error() + ": " + string(e) }
func (e deadlineError) Unwrap() error { return context.DeadlineExceeded }
