package file

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path/filepath"
	"strconv"
	"time"

	"github.com/berth-cni/berth/pkg/state"
)

// The revision counter of a network is <network>/rev: the revision of the
// network's last write, in decimal and a newline. A writer holding the
// lock takes the next revision by writing the counter first and its lease
// file (or the shared record) second, so a reader that reads the counter
// as R knows that every write up to R-1 is in the files and the write of
// R is, or is about to be (watch.go relies on it). A network without a
// counter (new, or written before revisions) starts after the highest
// revision of its lease files and its shared record.

const (
	revFile = "rev"
	// maxRevFile bounds what readRev reads: 19 digits and a newline, and
	// one byte to tell a longer file.
	maxRevFile = 21
)

// parseRev decodes the counter file: a decimal number from 0 to
// math.MaxInt64, without sign or leading zeros, and one newline.
func parseRev(b []byte) (int64, error) {
	n := len(b)
	if n == 0 || b[n-1] != '\n' {
		return 0, fmt.Errorf("revision counter %q: not a number and a newline", b)
	}
	digits := b[:n-1]
	if len(digits) == 0 || len(digits) > 1 && digits[0] == '0' {
		return 0, fmt.Errorf("revision counter %q: not a decimal number without leading zeros", b)
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("revision counter %q: not a decimal number", b)
		}
	}
	rev, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("revision counter %q: %w", b, err)
	}
	return rev, nil
}

// encodeRev is the content of the counter file for rev.
func encodeRev(rev int64) []byte { return append(strconv.AppendInt(nil, rev, 10), '\n') }

// readRev reads the counter of the network directory d; ok is false when
// there is none.
func readRev(d string) (rev int64, ok bool, err error) {
	path := filepath.Join(d, revFile)
	b, err := readAtMost(path, maxRevFile)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, err
	}
	if rev, err = parseRev(b); err != nil {
		return 0, false, fmt.Errorf("%s: %w", path, err)
	}
	return rev, true, nil
}

// bumpRev writes the next revision to the counter of d and returns it.
// The caller holds the lock and writes its lease file (or the shared
// record) next.
//
// Equivalent: echo $(( $(cat $dir/$network/rev) + 1 )) > $dir/$network/rev
func bumpRev(d string) (int64, error) {
	rev, ok, err := readRev(d)
	if err != nil {
		return 0, err
	}
	if !ok {
		recs, err := readLeases(d)
		if err != nil {
			return 0, err
		}
		for _, f := range recs {
			rev = max(rev, f.rev())
		}
		sh, _, err := readShared(d)
		if err != nil {
			return 0, err
		}
		rev = max(rev, sh.Rev)
	}
	if rev == math.MaxInt64 {
		return 0, fmt.Errorf("%s: revision counter at its maximum", filepath.Join(d, revFile))
	}
	rev++
	return rev, state.WriteAtomic(filepath.Join(d, revFile), encodeRev(rev))
}

// bury replaces the lease file of f by its tombstone, deleted at the next
// revision at now, and returns the tombstone. The caller holds the lock.
func bury(d string, f fileLease, now time.Time) (fileLease, error) {
	rev, err := bumpRev(d)
	if err != nil {
		return fileLease{}, err
	}
	f.DeletedRev, f.Expires = rev, now.UnixMilli()
	return f, writeLease(d, f)
}
