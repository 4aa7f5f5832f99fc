#!/usr/bin/env bash
# bench/growth.sh: does an ADD get slower as more containers hold host
# ports? For berth and upstream (bridge + host-local + portmap, one host
# port per container), two host namespaces each: "small" with A containers
# attached, "big" with B. Then K rounds, each timing one more container's
# ADD and DEL on upstream-small, upstream-big, berth-small, berth-big in
# turn, so the four series see the same machine load (a sequential
# first-50/last-50 comparison also measures whatever else the machine did
# in between). Reports the medians and big/small per implementation.
# See bench/README.md.
#
# Everything runs in namespaces this script creates (bgrow-PID-*) and
# removes on exit; the machine's own network namespace is never touched.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

usage() {
	cat <<'EOF'
usage: bench/growth.sh [-a A] [-b B] [-k K]

  -a A   containers attached in the small host (default 50)
  -b B   containers attached in the big host (default 500)
  -k K   timed ADD+DEL rounds per host (default 40)

Environment: BERTH_BIN (berth's plugins, default <repo>/bin), GO (default go).
Run as root, after `make build`.
EOF
}

A=50 B=500 K=40 GO=${GO:-go}
while getopts ':a:b:k:h' opt; do
	case $opt in
	a) A=$OPTARG ;;
	b) B=$OPTARG ;;
	k) K=$OPTARG ;;
	h)
		usage
		exit 0
		;;
	*)
		usage >&2
		exit 2
		;;
	esac
done
for v in A B K; do [[ ${!v} =~ ^[1-9][0-9]{0,3}$ ]] || die "-${v,,} wants an integer in 1..9999, got '${!v}'"; done
((B > A)) || die "-b ($B) must be more than -a ($A)"
[[ $(id -u) == 0 ]] || die "run as root: it creates network namespaces"

PFX=bgrow-$$
CSV=$OUT/growth-$STAMP.csv
TMP=""

cleanup() {
	local rc=$? ns
	set +e
	trap - EXIT INT TERM
	for ns in $(ip netns list 2>/dev/null | awk '{ print $1 }'); do
		[[ $ns == "$PFX"-* ]] && { ip netns del "$ns" 2>/dev/null || log "could not delete netns $ns"; }
	done
	rm -f "$RESULTS_DIR/$PFX-"*
	[[ -n $TMP ]] && rm -rf "$TMP"
	exit "$rc"
}
on_exit cleanup

mkdir -p "$OUT" "$UP_BIN"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bgrow.XXXXXX")
build_tools
for f in bridge host-local portmap; do
	[[ -x $BERTH_BIN/$f ]] || die "no $f in $BERTH_BIN: run 'make build' first"
done

# One network per (implementation, host); the same options for both
# implementations, berth's state directories added.
declare -A BIN=([upstream]=$UP_BIN [berth]=$BERTH_BIN)
declare -A COUNT=([small]=$A [big]=$B)
for impl in upstream berth; do
	for h in small big; do
		net=$PFX-$impl-$h
		extra="" pmextra=""
		if [[ $impl == berth ]]; then
			extra="\"dataDir\": \"$TMP/state-$net\","
			pmextra=", \"dataDir\": \"$TMP/ports-$net\""
		fi
		mkdir -p "$TMP/conf-$net"
		cat >"$TMP/conf-$net/$net.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "$net",
  "plugins": [
    { "type": "bridge", "bridge": "bg0", "isGateway": true, "ipMasq": true, $extra
      "ipam": { "type": "host-local", "subnet": "10.79.0.0/16", "dataDir": "$TMP/ipam-$net" } },
    { "type": "portmap", "capabilities": { "portMappings": true }$pmextra }
  ]
}
EOF
		ip netns add "$net"
	done
done

# cni IMPL HOST OP CONTAINER PORT: benchtime's arguments for cnitool in the
# host namespace, publishing PORT: benchtime joins the namespace and sets
# the environment before its clock starts, so a sample is cnitool alone.
cni() {
	local net=$PFX-$1-$2
	CMD=(-netns "/var/run/netns/$net" "NETCONFPATH=$TMP/conf-$net" "CNI_PATH=${BIN[$1]}" CNI_IFNAME=eth0
		"CAP_ARGS={\"portMappings\":[{\"hostPort\":$5,\"containerPort\":80,\"protocol\":\"tcp\"}]}"
		"$CNITOOL" "$3" "$net" "/var/run/netns/$4")
}

total=$((2 * (A + B)))
log "attaching $total containers ($A and $B per implementation)"
for impl in upstream berth; do
	for h in small big; do
		for ((i = 1; i <= COUNT[$h]; i++)); do
			c=$PFX-$impl-$h-$i
			ip netns add "$c"
			cni "$impl" "$h" add "$c" $((20000 + i))
			"$BENCHTIME" -o "$TMP/t" "${CMD[@]}" >/dev/null 2>"$TMP/err" || die "$impl $h: ADD $i failed: $(head -n1 "$TMP/err")"
		done
		ip netns add "$PFX-$impl-$h-x"
	done
done

log "$K rounds of ADD+DEL of one more container on each of the four hosts"
echo "impl,host,op,round,ns" >"$CSV"
for ((k = 1; k <= K; k++)); do
	for impl in upstream berth; do
		for h in small big; do
			for op in add del; do
				cni "$impl" "$h" "$op" "$PFX-$impl-$h-x" 30000
				"$BENCHTIME" -o "$TMP/t" "${CMD[@]}" >/dev/null 2>"$TMP/err" ||
					die "$impl $h: $op in round $k failed: $(head -n1 "$TMP/err")"
				echo "$impl,$h,$op,$k,$(<"$TMP/t")" >>"$CSV"
			done
		done
	done
done

# median IMPL HOST OP: the median in ms of that series.
median() {
	awk -F, -v i="$1" -v h="$2" -v o="$3" '$1 == i && $2 == h && $3 == o { print $5 / 1e6 }' "$CSV" |
		sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) printf "%.2f", v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
{
	echo "growth: bridge + host-local + portmap, one more container's ADD and DEL (medians of $K, ms)"
	echo "with $A vs $B containers (each holding one host port) attached; the four series interleaved"
	printf '%-10s %10s %10s %10s   %10s %10s %10s\n' impl "ADD@$A" "ADD@$B" big/small "DEL@$A" "DEL@$B" big/small
	for impl in upstream berth; do
		as=$(median "$impl" small add) ab=$(median "$impl" big add)
		ds=$(median "$impl" small del) db=$(median "$impl" big del)
		printf '%-10s %10s %10s %10.2f   %10s %10s %10.2f\n' "$impl" "$as" "$ab" "$(awk -v a="$ab" -v b="$as" 'BEGIN { print a / b }')" \
			"$ds" "$db" "$(awk -v a="$db" -v b="$ds" 'BEGIN { print a / b }')"
	done
	echo "- upstream: $UPMOD $UPVER; berth: $BERTH_BIN; host $(uname -r), $(nproc) CPUs, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- raw timings: ${CSV#"$ROOT"/}"
} | tee "$OUT/growth-$STAMP.txt"
