package nat

import "os/exec"

// Available reports whether backend name can run here: nftables always
// (netlink in-process), iptables when its restore and save tools exist for both families.
// DEL and GC sweep every available backend, since the config's backend may
// have changed since the ADD.
//
// Equivalent: command -v iptables-restore iptables-save
func Available(name string) bool {
	switch name {
	case "", NFTables:
		return true
	case IPTables:
		for _, bin := range []string{DefaultIPTablesCommands.Restore4, DefaultIPTablesCommands.Save4,
			DefaultIPTablesCommands.Restore6, DefaultIPTablesCommands.Save6} {
			if _, err := exec.LookPath(bin); err != nil {
				return false
			}
		}
		return true
	}
	return false
}
