// Package trace prints how long a plugin's steps take, for finding where an
// ADD spends its time: with BERTH_TRACE=1 in the plugin's environment each
// Step writes one line to stderr, "berth-trace <step> <ms>", the
// milliseconds since this package was initialised (early in the process,
// after the runtime's own start). Without it Step does nothing.
//
//	BERTH_TRACE=1 cnitool add <net> <netns> 2>&1 >/dev/null | grep berth-trace
package trace

import (
	"fmt"
	"os"
	"time"
)

var (
	start = time.Now()
	on    = os.Getenv("BERTH_TRACE") == "1"
)

// Step records that the step named name has just ended.
func Step(name string) {
	if on {
		fmt.Fprintf(os.Stderr, "berth-trace %s %.3f\n", name, float64(time.Since(start).Microseconds())/1000)
	}
}
