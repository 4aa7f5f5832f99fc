package pluginmain

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/berth-cni/berth/pkg/cnierr"
)

// badStdin are configs skel would refuse with the library's messages, and
// what berth answers instead: the code and what the message must name.
var badStdin = []struct {
	name string
	conf string
	code uint
	has  []string
}{
	{"malformed JSON", `{"cniVersion":"1.1.0","name":"pm","type":"pmtest",`, 6,
		[]string{"network config", "not valid JSON", "line 1, column 50", `"type":"pmtest",`, "unexpected end of JSON input"}},
	{"bad character", "{\"cniVersion\":\"1.1.0\",\n \"name\": \"pm\",\n \"type\": oops}", 6,
		[]string{"not valid JSON", "line 3, column 10", `"type": o`, "invalid character 'o'"}},
	{"empty stdin", "", 6, []string{"network config", "stdin is empty"}},
	{"not an object", `["pm"]`, 6, []string{"network config", "want a JSON object", "array"}},
	{"missing name", `{"cniVersion":"1.1.0","type":"pmtest"}`, 7, []string{`name ""`, "required"}},
	{"null name", `{"cniVersion":"1.1.0","name":null}`, 7, []string{`name ""`, "required"}},
	{"empty name", `{"cniVersion":"1.1.0","name":""}`, 7, []string{`name ""`, "required"}},
	{"name not a string", `{"cniVersion":"1.1.0","name":5}`, 7, []string{"name 5", "string"}},
	{"name dotdot", `{"cniVersion":"1.1.0","name":"../x"}`, 7, []string{`name "../x"`}},
	{"name slash", `{"cniVersion":"1.1.0","name":"a/b"}`, 7, []string{`name "a/b"`, `'/'`}},
	{"name 129 bytes", `{"cniVersion":"1.1.0","name":"` + strings.Repeat("n", 129) + `"}`, 7,
		[]string{`name "` + strings.Repeat("n", 129) + `"`, "128"}},
	{"name key in capitals", `{"cniVersion":"1.1.0","NAME":"a/b"}`, 7, []string{`name "a/b"`}},
	{"cniVersion 9.9.9", `{"cniVersion":"9.9.9","name":"pm"}`, 1,
		[]string{`cniVersion "9.9.9"`, "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"}},
	{"cniVersion missing", `{"name":"pm"}`, 1, []string{"cniVersion (missing", "0.1.0", "1.1.0"}},
	{"cniVersion not a string", `{"cniVersion":1.1,"name":"pm"}`, 7, []string{"cniVersion 1.1", "string"}},
	{"cniVersion not semver", `{"cniVersion":"abc","name":"pm"}`, 1, []string{`cniVersion "abc"`, "1.1.0"}},
}

func TestValidateStdinRefuses(t *testing.T) {
	t.Parallel()
	for _, tc := range badStdin {
		for _, cmd := range []string{"ADD", "DEL", "CHECK", "GC", "STATUS"} {
			t.Run(tc.name+"/"+cmd, func(t *testing.T) {
				t.Parallel()
				err := validateStdin(cmd, []byte(tc.conf))
				wantCNI(t, err, tc.code, tc.has...)
			})
		}
	}
}

// A command younger than the config's cniVersion is refused as skel does,
// with code 1 naming the command, the value and the version it needs.
func TestValidateStdinCommandVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmd, version, oldest string
	}{
		{"CHECK", "0.3.1", "0.4.0"},
		{"CHECK", "0.3.0", "0.4.0"},
		{"GC", "1.0.0", "1.1.0"},
		{"STATUS", "0.4.0", "1.1.0"},
	} {
		conf := `{"cniVersion":"` + tc.version + `","name":"pm"}`
		wantCNI(t, validateStdin(tc.cmd, []byte(conf)), 1, tc.cmd, `cniVersion "`+tc.version+`"`, tc.oldest)
		if err := validateStdin("ADD", []byte(conf)); err != nil {
			t.Errorf("ADD with cniVersion %s: %v", tc.version, err)
		}
	}
}

func TestValidateStdinAccepts(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cmds []string
		conf string
	}{
		{[]string{"ADD", "DEL"}, `{"cniVersion":"0.3.0","name":"pm"}`},
		{[]string{"ADD", "DEL", "CHECK"}, `{"cniVersion":"0.4.0","name":"a.b_c-1"}`},
		{[]string{"ADD", "DEL", "CHECK", "GC", "STATUS"}, `{"cniVersion":"1.1.0","name":"` + strings.Repeat("n", 128) + `","type":"x","ipam":{}}`},
		{[]string{"ADD", "DEL", "CHECK"}, " \n{\"cniversion\": \"1.0.0\", \"Name\": \"pm\", \"name\": \"pm2\"}\n"},
	} {
		for _, cmd := range tc.cmds {
			if err := validateStdin(cmd, []byte(tc.conf)); err != nil {
				t.Errorf("%s %s: %v", cmd, tc.conf, err)
			}
		}
	}
}

// FuzzValidateStdin checks that berth answers first: whatever skel's own
// checks refuse, validateStdin refuses too, and whatever validateStdin
// accepts gets through skel's checks, so skel never answers a config
// with its own message. It refuses only with the codes skel uses.
func FuzzValidateStdin(f *testing.F) {
	for _, tc := range badStdin {
		f.Add("ADD", []byte(tc.conf))
	}
	f.Add("CHECK", []byte(`{"cniVersion":"0.4.0","name":"pm"}`))
	f.Add("GC", []byte(`{"cniVersion":"1.1.0","name":"pm","cniVersion":"1.0.0"}`))
	f.Add("STATUS", []byte(`{"CNIVERSION":"1.1.0","name":"pm"}`))
	f.Fuzz(func(t *testing.T, cmd string, stdin []byte) {
		if !carriesConfig(cmd) {
			return
		}
		err := validateStdin(cmd, stdin)
		skelErr := skelChecks(cmd, stdin)
		if err == nil && skelErr != nil {
			t.Fatalf("%s %q: berth accepts, skel refuses: %v", cmd, stdin, skelErr)
		}
		if err != nil {
			if code := cnierr.Code(err); code != 1 && code != 6 && code != 7 {
				t.Fatalf("%s %q: code %d: %v", cmd, stdin, code, err)
			}
		}
	})
}

// skelChecks does what skel (cni v1.3.0, pkg/skel/skel.go) does to stdin
// before it calls a plugin's command: validateConfig, then the command's
// version checks and checkVersionAndCall's reconciliation.
func skelChecks(cmd string, stdin []byte) error {
	var conf struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(stdin, &conf); err != nil {
		return err
	}
	if conf.Name == "" {
		return errors.New("missing network name")
	}
	if err := utils.ValidateNetworkName(conf.Name); err != nil {
		return err
	}
	v, err := (&version.ConfigDecoder{}).Decode(stdin)
	if err != nil {
		return err
	}
	if oldest, ok := minVersion[cmd]; ok {
		newEnough, err := version.GreaterThanOrEqualTo(v, oldest)
		if err != nil {
			return err
		}
		if !newEnough {
			return errors.New("config version does not allow " + cmd)
		}
	}
	if !slices.Contains(SpecVersions.SupportedVersions(), v) {
		return errors.New("incompatible CNI versions")
	}
	return nil
}

// wantCNI checks that err becomes a CNI error with code whose message
// contains each of has.
func wantCNI(t *testing.T, err error, code uint, has ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("got success, want CNI error code %d", code)
		return
	}
	var te *types.Error
	if !errors.As(cnierr.ToCNI(err), &te) {
		t.Fatalf("ToCNI(%v) is not a *types.Error", err)
	}
	if te.Code != code {
		t.Errorf("code %d, want %d: %s", te.Code, code, te.Error())
	}
	for _, s := range has {
		if !strings.Contains(te.Msg, s) {
			t.Errorf("message %q does not contain %q", te.Msg, s)
		}
	}
}
