# shellcheck shell=bash
# bench/lib.sh: what bench/run.sh and bench/growth.sh share. Sourced, not run,
# right after the script sets ROOT (the repository): it defines die and log
# and sets the paths both use. build_tools also needs TMP and GO.

die() {
	printf 'bench: %s\n' "$*" >&2
	exit 1
}
log() { printf '# %s\n' "$*" >&2; }

# on_exit FN: run FN when the script exits, also on SIGINT and SIGTERM
# (exit codes 130 and 143).
on_exit() {
	# shellcheck disable=SC2064 # FN is a name: expanding it now is the point
	trap "$1" EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

UPMOD=github.com/containernetworking/plugins
OUT=$ROOT/bench/out
BERTH_BIN=${BERTH_BIN:-$ROOT/bin}
UP_BIN=$OUT/upstream-bin
CNITOOL=$OUT/cnitool
BENCHTIME=$OUT/benchtime
# shellcheck disable=SC2034 # used by run.sh, which builds it for -l
CNIDRIVE=$OUT/cnidrive
# libcni caches ADD results here, as runtimes' libcni does (cnitool has no
# knob to move it, and bench/cnidrive keeps the default); DEL removes each
# entry, the scripts' exit traps remove any left by a failed run. STAMP
# names a run's output files.
# shellcheck disable=SC2034 # both used by the scripts that source this
RESULTS_DIR=/var/lib/cni/results STAMP=$(date +%Y%m%d-%H%M%S)-$$

# build_tools: the upstream plugins (bridge, host-local, portmap) at the
# version pinned in go.mod into UP_BIN, cnitool into CNITOOL and the timing
# wrapper into BENCHTIME. Sets UPVER.
build_tools() {
	cd "$ROOT" || die "cd $ROOT failed"
	UPVER=$("$GO" list -m -f '{{.Version}}' "$UPMOD")
	log "building upstream $UPMOD $UPVER (bridge, host-local, portmap) into ${UP_BIN#"$ROOT"/}"
	upbuild=(build -trimpath -ldflags '-s -w' -o "$UP_BIN/" "$UPMOD/plugins/main/bridge" "$UPMOD/plugins/ipam/host-local" "$UPMOD/plugins/meta/portmap")
	if ! CGO_ENABLED=0 "$GO" "${upbuild[@]}" 2>"$TMP/build.err"; then
		grep -q 'missing go.sum entry' "$TMP/build.err" || {
			cat "$TMP/build.err" >&2
			die "building the upstream plugins failed"
		}
		# go.sum lacks hashes the upstream bridge needs (it imports packages berth
		# does not). Build with a private copy of go.mod/go.sum under bench/out:
		# same pinned versions, and the repo's go.mod/go.sum stay untouched.
		log "go.sum lacks entries upstream bridge needs; building with a copy of go.mod/go.sum in bench/out"
		cp go.mod "$OUT/upstream.mod"
		cp go.sum "$OUT/upstream.sum"
		UPVER2=$("$GO" list -modfile="$OUT/upstream.mod" -m -f '{{.Version}}' "$UPMOD")
		[[ $UPVER2 == "$UPVER" ]] || die "upstream version drifted: $UPVER2 != $UPVER"
		CGO_ENABLED=0 "$GO" "${upbuild[0]}" -modfile="$OUT/upstream.mod" -mod=mod "${upbuild[@]:1}" ||
			die "building the upstream plugins failed"
	fi
	"$GO" build -o "$CNITOOL" github.com/containernetworking/cni/cnitool || die "building cnitool failed"
	"$GO" build -o "$BENCHTIME" ./bench/benchtime || die "building bench/benchtime failed"
}
