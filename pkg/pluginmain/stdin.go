package pluginmain

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-cni/berth/pkg/cnierr"
	"github.com/berth-cni/berth/pkg/config"
)

// minVersion is the oldest cniVersion each command exists in (CHECK came
// with spec 0.4.0, GC and STATUS with 1.1.0); skel refuses older configs
// for these commands.
var minVersion = map[string]string{"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}

// carriesConfig reports whether cmd gets a network config on stdin. VERSION
// does not: the spec lets its stdin be empty or absent, and skel ignores it.
func carriesConfig(cmd string) bool {
	switch cmd {
	case "ADD", "DEL", "CHECK", "GC", "STATUS":
		return true
	}
	return false
}

// confHead is the part of a network config that skel checks before any of
// a plugin's commands runs. The values stay raw so that a value of the
// wrong type is reported under its key.
type confHead struct {
	CNIVersion json.RawMessage `json:"cniVersion"`
	Name       json.RawMessage `json:"name"`
}

// rawJSON is a JSON value as given; cnierr prints it unquoted.
type rawJSON string

// validateStdin checks what skel would otherwise refuse with the library's
// own messages, in skel's order: that stdin decodes as JSON, the network
// name, and cniVersion against the versions berth speaks and the oldest
// that knows cmd. It decodes with encoding/json into the same field names
// as skel does (keys match case-insensitively, the last duplicate wins), so
// input it accepts passes skel's checks as well. It is pure.
func validateStdin(cmd string, stdin []byte) error {
	var h confHead
	if err := json.Unmarshal(stdin, &h); err != nil {
		return decodeError(stdin, err)
	}
	name, err := stringField("name", h.Name)
	if err != nil {
		return err
	}
	if err = config.ValidateNetworkName(name); err != nil {
		return err
	}
	v, err := stringField("cniVersion", h.CNIVersion)
	if err != nil {
		return err
	}
	return validateVersion(cmd, v)
}

// stringField decodes the string under key; absent and null are "", as in
// skel.
func stringField(key string, raw json.RawMessage) (string, error) {
	var s string
	if len(raw) == 0 {
		return s, nil
	}
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", cnierr.Field(key, rawJSON(raw), "must be a JSON string")
	}
	return s, nil
}

// decodeError reports stdin that is not a JSON object. The CNI spec's
// error table (SPEC.md) gives code 6 to "failed to decode content, for
// example, failed to unmarshal network config from bytes" and 7 to "some
// validations on network configs do not pass": input that is not JSON
// cannot be validated at all, so it is 6, as skel answers too. (JSON with a
// value of the wrong type under a key decodes, and is 7 naming the key.)
// There is no key to name, so the message gives the line and column where
// the decoder stopped and the text leading up to it.
func decodeError(stdin []byte, err error) error {
	wrap := func(format string, args ...any) error {
		return cnierr.WithCode(types.ErrDecodingFailure, fmt.Errorf("decode network config from stdin: "+format, args...))
	}
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case len(bytes.TrimSpace(stdin)) == 0:
		return wrap("stdin is empty, want the network config JSON: %w", err)
	case errors.As(err, &se):
		line, col, text := stoppedAt(stdin, se.Offset)
		return wrap("not valid JSON at line %d, column %d, in `%s`: %w", line, col, text, err)
	case errors.As(err, &te):
		return wrap("want a JSON object, got a JSON %s", te.Value)
	default:
		return wrap("%w", err)
	}
}

// stoppedAt locates the last byte the JSON decoder read, given its
// SyntaxError offset (the count of bytes read): its 1-based line and
// column, and up to 24 bytes of its line ending with it.
func stoppedAt(b []byte, offset int64) (line, col int, text string) {
	if len(b) == 0 {
		return 1, 1, ""
	}
	end := int(min(max(offset, 1), int64(len(b))))
	head := b[:end]
	start := bytes.LastIndexByte(head[:end-1], '\n') + 1
	line = 1 + bytes.Count(head[:start], []byte("\n"))
	col = end - start
	return line, col, strings.ToValidUTF8(strings.TrimRight(string(head[max(start, end-24):]), "\r\n"), "")
}

// validateVersion checks cniVersion v as skel's reconciler does (exact
// match with one of SpecVersions; missing means 0.1.0) and against the
// oldest version that has cmd, with code 1 and a message naming the key,
// the value and what berth accepts.
func validateVersion(cmd, v string) error {
	supported := SpecVersions.SupportedVersions()
	if !slices.Contains(supported, v) {
		shown := fmt.Sprintf("%q", v)
		if v == "" {
			shown = "(missing, which means 0.1.0)"
		}
		return cnierr.WithCode(types.ErrIncompatibleCNIVersion, fmt.Errorf(
			"incompatible CNI version: cniVersion %s: berth supports %s", shown, strings.Join(supported, ", ")))
	}
	oldest, ok := minVersion[cmd]
	if !ok {
		return nil
	}
	newEnough, err := version.GreaterThanOrEqualTo(v, oldest)
	if err != nil {
		return fmt.Errorf("compare cniVersion %q with %s: %w", v, oldest, err)
	}
	if !newEnough {
		return cnierr.WithCode(types.ErrIncompatibleCNIVersion, fmt.Errorf(
			"incompatible CNI version: cniVersion %q: %s needs cniVersion %s or later", v, cmd, oldest))
	}
	return nil
}

// replay returns a pipe that yields data and then EOF. skel (cni v1.3.0)
// reads its input only from os.Stdin: its dispatcher, which takes any
// io.Reader, is unexported. So Run, having read stdin to validate it, gives
// skel the same bytes back through this pipe, written from a goroutine so
// that a config larger than the pipe buffer does not block.
func replay(data []byte) (*os.File, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	go func() {
		_, werr := w.Write(data)
		if cerr := w.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			fmt.Fprintf(os.Stderr, "berth: hand the network config on to skel: %v\n", werr)
		}
	}()
	return r, nil
}

// readStdin reads all of in; a failure is the spec's I/O error (code 5), as
// in skel.
func readStdin(in io.Reader) ([]byte, error) {
	data, err := io.ReadAll(in)
	if err != nil {
		return nil, cnierr.WithCode(types.ErrIOFailure, fmt.Errorf("read network config from stdin: %w", err))
	}
	return data, nil
}
