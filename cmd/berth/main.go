// Command berth is berth's command-line tool. Its one subcommand so far,
// `berth ports`, lists the host ports containers hold, from the same
// reservations the portmap plugin keeps:
//
//	berth ports [-dir /run/berth/portmap] [-json]
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/berth-cni/berth/pkg/buildinfo"
	"github.com/berth-cni/berth/pkg/config"
	"github.com/berth-cni/berth/pkg/hostport"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

const usage = `usage: berth <command> [flags]

commands:
  ports     list the host ports containers hold (protocol, address, port,
            container ID, network, interface, container address:port)
  version   print the build string
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "ports":
		return ports(args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, buildinfo.String("berth"))
		return 0
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "berth: unknown command %q\n%s", args[0], usage)
	return 2
}

// portRow is one held port as `berth ports -json` prints it.
type portRow struct {
	Protocol      string   `json:"protocol"`
	HostIP        string   `json:"hostIP"` // "" = every address of both families
	HostPort      uint16   `json:"hostPort"`
	ContainerID   string   `json:"containerID"`
	Network       string   `json:"network"`
	IfName        string   `json:"ifName"`
	ContainerIPs  []string `json:"containerIPs"`
	ContainerPort uint16   `json:"containerPort"`
}

func ports(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("berth ports", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", config.DefaultPortmapDir, "the portmap plugin's dataDir (reservations)")
	asJSON := fs.Bool("json", false, "print JSON instead of a table")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "berth ports: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	claims, err := hostport.Open(*dir).Claims()
	rc := 0
	if err != nil {
		// Listed claims are still printed: one unreadable file does not
		// hide the others.
		fmt.Fprintf(stderr, "berth ports: %v\n", err)
		rc = 1
	}
	rows := make([]portRow, 0, len(claims))
	for _, c := range claims {
		r := portRow{Protocol: c.Proto, HostIP: c.HostIP, HostPort: c.HostPort, ContainerID: c.ContainerID,
			Network: c.Network, IfName: c.IfName, ContainerPort: c.ContainerPort, ContainerIPs: []string{}}
		for _, t := range c.Targets {
			r.ContainerIPs = append(r.ContainerIPs, t.Addr().String())
		}
		rows = append(rows, r)
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rows); err != nil {
			fmt.Fprintf(stderr, "berth ports: %v\n", err)
			return 1
		}
		return rc
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROTO\tADDRESS\tPORT\tCONTAINER\tNETWORK\tIFACE\tTO")
	for _, r := range rows {
		addr := r.HostIP
		if addr == "" {
			addr = "*"
		}
		var to []string
		for _, ip := range r.ContainerIPs {
			a, _ := netip.ParseAddr(ip)
			to = append(to, netip.AddrPortFrom(a, r.ContainerPort).String())
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", r.Protocol, addr, r.HostPort, r.ContainerID, r.Network, r.IfName, strings.Join(to, ","))
	}
	if err := tw.Flush(); err != nil {
		return 1
	}
	return rc
}
