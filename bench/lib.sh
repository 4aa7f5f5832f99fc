# bench/lib.sh: what bench/run.sh and bench/growth.sh share. Sourced, not run.
# Needs ROOT, OUT, UP_BIN, CNITOOL, BENCHTIME, TMP, GO set, and log/die.

UPMOD=github.com/containernetworking/plugins

# build_tools: the upstream plugins (bridge, host-local, portmap) at the
# version pinned in go.mod into UP_BIN, cnitool into CNITOOL and the timing
# wrapper into BENCHTIME. Sets UPVER.
build_tools() {
	cd "$ROOT"
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
