// Package state keeps one record per attachment in files under
// <dataDir>/<network>/ (default /var/lib/berth). A record is written before
// the ADD creates anything, so a plugin killed mid-ADD leaves a record that
// DEL and GC find; it is removed last by DEL. A record file holds JSON
// lines, each a later version of the record: the last that decodes is it.
package state

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Record is what berth remembers of one attachment.
type Record struct {
	Network     string   `json:"network"`
	ContainerID string   `json:"containerID"`
	IfName      string   `json:"ifName"`
	Netns       string   `json:"netns,omitempty"`
	HostVeth    string   `json:"hostVeth,omitempty"`
	IPs         []string `json:"ips,omitempty"`         // CIDR notation, as assigned
	MasqBackend string   `json:"masqBackend,omitempty"` // nat backend holding its masquerade state
	Complete    bool     `json:"complete"`              // the ADD finished
}

// Store is the records of one network.
type Store struct {
	dir string
}

// Open returns the store of network under dataDir. Both are validated by
// the caller (config): the network name cannot escape dataDir.
func Open(dataDir, network string) Store {
	return Store{dir: filepath.Join(dataDir, network)}
}

// Dir is the directory holding the records.
func (s Store) Dir() string { return s.dir }

func (s Store) path(containerID, ifName string) string {
	sum := sha256.Sum256([]byte(containerID + "\x00" + ifName))
	return filepath.Join(s.dir, hex.EncodeToString(sum[:10])+".json")
}

// Put makes r the attachment's record. A new record is written atomically
// (temp file, rename). A record that exists gets r appended as a new line,
// the line readers take: appending costs one write, where a new file costs
// an inode and a rename over a file makes ext4 flush it first
// (bench/README.md has the figures). A file past maxRecordFile is rewritten with r alone, as
// is one that was renamed over or removed while r was appended (only
// concurrent Puts and Deletes of one attachment do that, which the spec's
// one-operation-at-a-time rule excludes). There is no fsync: the records
// guard against a killed plugin, not a lost disk cache, and an fsync per
// ADD costs more than the rest of the record keeping. A line cut short
// (a kill in mid-write) is skipped by readers, and the next append starts
// on a line of its own.
//
// Equivalent: echo "$json" >> $dir/$hash.json
func (s Store) Put(r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	path := s.path(r.ContainerID, r.IfName)
	if appended, err := appendRecord(path, b); appended || err != nil {
		return err
	}
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	return WriteAtomic(path, append(b, '\n'))
}

// appendRecord appends b as a line to the record file at path if there is
// one under maxRecordFile, and reports whether b is now its last line.
func appendRecord(path string, b []byte) (bool, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return false, nil // none (or unwritable: WriteAtomic says why)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || fi.Size() >= maxRecordFile {
		return false, nil
	}
	// The leading newline ends a line a lost disk cache or a kill tore.
	if _, err := f.Write(append(append([]byte{'\n'}, b...), '\n')); err != nil {
		return false, fmt.Errorf("append to record %s: %w", path, err)
	}
	now, err := os.Stat(path)
	return err == nil && os.SameFile(fi, now), nil
}

// maxRecordFile bounds a record file: past it, Put starts it afresh.
const maxRecordFile = 8 << 10

// WriteAtomic replaces the file at path with data: a temp file in the same
// directory, renamed over it, so a reader sees the old or the new content,
// never a part. No fsync (see Put).
func WriteAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if err := errors.Join(werr, cerr); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Get reads the record of an attachment; ok is false if there is none.
func (s Store) Get(containerID, ifName string) (r Record, ok bool, err error) {
	b, err := os.ReadFile(s.path(containerID, ifName))
	if errors.Is(err, fs.ErrNotExist) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, fmt.Errorf("read record: %w", err)
	}
	if r, err = lastValue[Record](b); err != nil {
		return Record{}, false, fmt.Errorf("decode record %s: %w", s.path(containerID, ifName), err)
	}
	return r, true, nil
}

// Delete removes an attachment's record; a missing one is not an error.
func (s Store) Delete(containerID, ifName string) error {
	err := os.Remove(s.path(containerID, ifName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove record: %w", err)
	}
	return nil
}

// List returns every record of the network. Unreadable files are reported
// in the error but do not hide the others.
func (s Store) List() ([]Record, error) {
	out, err := readJSONDir(s.dir, lastValue[Record])
	if err != nil {
		err = fmt.Errorf("list records: %w", err)
	}
	return out, err
}

// ReadJSONDir decodes every *.json file of dir (none when dir is missing),
// each one JSON value. A file that cannot be read or decoded is named in
// the joined error and does not hide the others.
func ReadJSONDir[T any](dir string) ([]T, error) {
	return readJSONDir(dir, func(b []byte) (T, error) {
		var v T
		err := json.Unmarshal(b, &v)
		return v, err
	})
}

func readJSONDir[T any](dir string, decode func([]byte) (T, error)) ([]T, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []T
	var errs []error
	for _, e := range entries {
		if e.IsDir() || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		v, err := decode(b)
		if err != nil {
			errs = append(errs, fmt.Errorf("decode %s: %w", filepath.Join(dir, e.Name()), err))
			continue
		}
		out = append(out, v)
	}
	return out, errors.Join(errs...)
}

// lastValue decodes the last line of b that holds a JSON value of type T;
// blank lines and lines that do not decode (a line a lost disk cache tore)
// are skipped. A file of one value over several lines (written before
// records were appended to) is that value.
func lastValue[T any](b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	if err == nil {
		return v, nil
	}
	lines := bytes.Split(b, []byte{'\n'})
	for i := len(lines) - 1; i >= 0; i-- {
		line := bytes.TrimSpace(lines[i])
		if len(line) == 0 {
			continue
		}
		var w T
		if json.Unmarshal(line, &w) == nil {
			return w, nil
		}
	}
	return v, err
}
