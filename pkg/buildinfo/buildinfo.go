// Package buildinfo holds the version stamped in at build time. It is pure.
package buildinfo

import (
	"fmt"
	"runtime"
)

// Version is set by the Makefile with -ldflags -X.
var Version = "dev"

// String is the "about" text a plugin prints for CNI_COMMAND=VERSION and
// when run with no CNI_COMMAND.
func String(plugin string) string {
	return fmt.Sprintf("berth %s %s (%s)", plugin, Version, runtime.Version())
}
