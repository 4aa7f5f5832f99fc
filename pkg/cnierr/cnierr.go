// Package cnierr turns berth's Go errors into CNI errors with the spec's
// codes. It is pure. Plugins build errors with the constructors here and
// convert once, at the cmd* boundary, with ToCNI.
package cnierr

import (
	"errors"
	"fmt"

	"github.com/containernetworking/cni/pkg/types"
)

// berth's own codes (the spec reserves 100 and above for plugins). They are
// documented in the README; never renumber them.
const (
	// CodeKernelFeature: the config needs a kernel feature this host lacks.
	CodeKernelFeature uint = 100
	// CodePortHeld: a host port is already held by another container.
	CodePortHeld uint = 101
	// CodePortInUse: a host port is already bound by a process on the host.
	CodePortInUse uint = 102
	// CodeHostState: host state berth must build on is missing or conflicting
	// (a bridge name taken by a non-bridge, an address owned by someone else).
	CodeHostState uint = 103
	// CodeNotAvailable is the spec's STATUS code: the plugin cannot serve ADDs.
	CodeNotAvailable uint = 50
)

// FieldError is a config value that fails validation (CNI code 7).
type FieldError struct {
	Field  string // the JSON key, dotted for nesting: "ipam.type"
	Value  any    // the offending value, as given
	Reason string
}

func (e *FieldError) Error() string {
	return fmt.Sprintf("invalid config: %s %s: %s", e.Field, quote(e.Value), e.Reason)
}

// Field returns a *FieldError.
func Field(field string, value any, format string, args ...any) error {
	return &FieldError{Field: field, Value: value, Reason: fmt.Sprintf(format, args...)}
}

// EnvError is a bad runtime environment (CNI code 4): CNI_NETNS missing, an
// interface name already taken inside the container.
type EnvError struct {
	Var    string // CNI_NETNS, CNI_IFNAME, CNI_CONTAINERID, CNI_ARGS
	Value  string
	Reason string
	Err    error
}

func (e *EnvError) Error() string {
	msg := fmt.Sprintf("invalid environment: %s=%q: %s", e.Var, e.Value, e.Reason)
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *EnvError) Unwrap() error { return e.Err }

// Env returns an *EnvError.
func Env(variable, value string, cause error, format string, args ...any) error {
	return &EnvError{Var: variable, Value: value, Reason: fmt.Sprintf(format, args...), Err: cause}
}

// CodedError carries one of berth's own codes (100+) or a spec code that has
// no richer type here.
type CodedError struct {
	Code uint
	Err  error
}

func (e *CodedError) Error() string { return e.Err.Error() }
func (e *CodedError) Unwrap() error { return e.Err }

// WithCode attaches code to err.
func WithCode(code uint, err error) error {
	if err == nil {
		return nil
	}
	return &CodedError{Code: code, Err: err}
}

// KernelFeature reports a kernel feature the host lacks (code 100).
func KernelFeature(feature string, cause error) error {
	return &CodedError{Code: CodeKernelFeature, Err: fmt.Errorf("this kernel lacks %s: %w", feature, cause)}
}

// ErrNotAvailable marks a STATUS failure (code 50).
var ErrNotAvailable = errors.New("plugin not available")

// Code returns the CNI code ToCNI would give err.
func Code(err error) uint {
	var te *types.Error
	var fe *FieldError
	var ee *EnvError
	var ce *CodedError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &te):
		return te.Code
	case errors.As(err, &ce):
		return ce.Code
	case errors.As(err, &fe):
		return types.ErrInvalidNetworkConfig
	case errors.As(err, &ee):
		return types.ErrInvalidEnvironmentVariables
	case errors.Is(err, ErrNotAvailable):
		return CodeNotAvailable
	default:
		return types.ErrInternal
	}
}

// ToCNI converts err to a *types.Error with the right code; the message is
// err's whole text so no context is lost. A *types.Error (from a delegated
// plugin, say) keeps its code and gains the context around it.
func ToCNI(err error) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		if msg := err.Error(); msg != te.Error() {
			return &types.Error{Code: te.Code, Msg: msg, Details: te.Details}
		}
		return te
	}
	return &types.Error{Code: Code(err), Msg: err.Error()}
}

func quote(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("%q", v)
	case nil:
		return "(missing)"
	default:
		return fmt.Sprintf("%v", v)
	}
}
