// Package vm is berth's VM test layer: it runs the tests that need a
// kernel feature this machine's kernel may lack (those whose body calls
// lab.RequireKernel) inside a VM booted from Debian's stock kernel under
// qemu, where every such feature exists.
//
// Pure parts: the cpio (newc) writer, the bzImage payload locator, the
// module index (modinfo, dependency closure, modules.dep), the source
// scanner that finds the gated tests, the VM's /init script and the
// console parser that judges the run. Effects, each named at its
// function: apt-get download and dpkg-deb into a cache directory, xz,
// go build and go test -c, reading host programs and their shared
// libraries, and one qemu process (-net none) started and killed by PID.
// Nothing here touches a network namespace; inside the VM anything goes.
package vm
