package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
)

// Runner drives CNI plugins through libcni, the library containerd uses,
// executing every plugin binary inside the lab's host namespace. A plugin
// that delegates (IPAM) execs its delegate from there, so the delegate runs
// in the host namespace too.
type Runner struct {
	Host     *NS
	BinDirs  []string // CNI_PATH
	CacheDir string   // libcni's result cache (default /var/lib/cni: always set one)
	// Log, when set, receives each plugin's stderr.
	Log io.Writer

	cni *libcni.CNIConfig
}

// NewRunner returns a runner executing the plugins in binDirs inside host,
// with libcni's cache under cacheDir.
func NewRunner(host *NS, binDirs []string, cacheDir string, log io.Writer) *Runner {
	r := &Runner{Host: host, BinDirs: binDirs, CacheDir: cacheDir, Log: log}
	r.cni = libcni.NewCNIConfigWithCacheDir(binDirs, cacheDir, &nsExec{host: host, log: log})
	return r
}

// CNI returns the underlying libcni config, for calls the runner does not wrap.
func (r *Runner) CNI() *libcni.CNIConfig { return r.cni }

// Attachment names one container interface on a network: what a runtime
// passes as CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS and
// capability arguments (runtimeConfig: "mac", "ips", "portMappings", …).
type Attachment struct {
	ContainerID    string
	NetNS          string // path, e.g. /var/run/netns/NAME; may be empty or gone for DEL
	IfName         string
	Args           [][2]string
	CapabilityArgs map[string]any
}

func (a Attachment) rt() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID:    a.ContainerID,
		NetNS:          a.NetNS,
		IfName:         a.IfName,
		Args:           a.Args,
		CapabilityArgs: a.CapabilityArgs,
	}
}

// Add runs ADD over the list (CNI_COMMAND=ADD for each plugin in turn).
func (r *Runner) Add(ctx context.Context, list *libcni.NetworkConfigList, a Attachment) (types.Result, error) {
	return r.cni.AddNetworkList(ctx, list, a.rt())
}

// Check runs CHECK over the list.
func (r *Runner) Check(ctx context.Context, list *libcni.NetworkConfigList, a Attachment) error {
	return r.cni.CheckNetworkList(ctx, list, a.rt())
}

// Del runs DEL over the list (plugins in reverse order).
func (r *Runner) Del(ctx context.Context, list *libcni.NetworkConfigList, a Attachment) error {
	return r.cni.DelNetworkList(ctx, list, a.rt())
}

// GC runs libcni's garbage collection: a DEL for each attachment in the
// runner's cache that is not in valid, then GC (spec 1.1) for each plugin
// with cni.dev/valid-attachments.
func (r *Runner) GC(ctx context.Context, list *libcni.NetworkConfigList, valid []Attachment) error {
	args := &libcni.GCArgs{}
	for _, a := range valid {
		args.ValidAttachments = append(args.ValidAttachments, types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName})
	}
	return r.cni.GCNetworkList(ctx, list, args)
}

// Status runs STATUS (spec 1.1) for each plugin of the list.
func (r *Runner) Status(ctx context.Context, list *libcni.NetworkConfigList) error {
	return r.cni.GetStatusNetworkList(ctx, list)
}

// Version asks the plugin binary pluginType for its supported versions.
func (r *Runner) Version(ctx context.Context, pluginType string) (version.PluginInfo, error) {
	return r.cni.GetVersionInfo(ctx, pluginType)
}

// nsExec is an invoke.Exec that starts each plugin from a thread inside the
// host namespace, so the plugin process (and whatever it execs) lives there.
type nsExec struct {
	host *NS
	log  io.Writer
	mu   sync.Mutex // serialises writes to log
}

var _ invoke.Exec = (*nsExec)(nil)

func (e *nsExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	err := e.host.Run(cmd)
	if e.log != nil && stderr.Len() > 0 {
		e.mu.Lock()
		fmt.Fprintf(e.log, "%s %s stderr: %s\n", commandOf(environ), pluginPath, strings.TrimSpace(stderr.String()))
		e.mu.Unlock()
	}
	if err != nil {
		return nil, pluginError(err, stdout.Bytes(), stderr.Bytes())
	}
	return stdout.Bytes(), nil
}

func commandOf(environ []string) string {
	for _, kv := range environ {
		if v, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			return v
		}
	}
	return "?"
}

// pluginError turns a failed plugin run into the *types.Error it printed
// (as invoke.RawExec does), adding its stderr to the message when the plugin
// printed no error of its own.
func pluginError(err error, stdout, stderr []byte) error {
	e := &types.Error{}
	switch {
	case len(stdout) == 0 && len(stderr) == 0:
		e.Msg = fmt.Sprintf("netplugin failed with no error message: %v", err)
	case len(stdout) == 0:
		e.Msg = fmt.Sprintf("netplugin failed: %q", string(stderr))
	default:
		if perr := json.Unmarshal(stdout, e); perr != nil {
			e.Msg = fmt.Sprintf("netplugin failed but error parsing its diagnostic message %q: %v", string(stdout), perr)
		}
	}
	return e
}

func (e *nsExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (e *nsExec) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}
