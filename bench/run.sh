#!/usr/bin/env bash
# bench/run.sh: time a bridge + host-local chain through cnitool (and, with
# -l, through libcni in-process), berth's plugins (bin/) against the upstream
# reference plugins (the version pinned in go.mod), in one run. See
# bench/README.md.
#
# Everything runs inside network namespaces this script creates
# (bbench-host-PID-*, bbench-c-PID-*) and removes on exit; the machine's own
# network namespace is never touched.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

usage() {
	cat <<'EOF'
usage: bench/run.sh [-n N] [-p] [-P COUNT] [-m] [-l]

  -n N      containers in the sequential ADD/DEL runs (default 50; env N)
  -m        chain portmap after bridge, each container publishing one host
            port (env PM=1); with N >= 100 also reports how the ADD median
            of the last 50 containers compares with the first 50
  -p        also time COUNT concurrent ADDs, then COUNT concurrent DELs,
            wall clock, per implementation (env PAR=1)
  -P COUNT  concurrency of -p (default 20; env P); implies -p
  -l        also time the same chains driven by libcni in-process
            (bench/cnidrive), as containerd and kubelet's runtimes call
            plugins: no cnitool process per call (env LIBCNI=1)
  -h        this help

Environment: BERTH_BIN (berth's plugins, default <repo>/bin), GO (default go).
Run as root, after `make build`. Raw per-call timings go to bench/out/.
EOF
}

N=${N:-50}
P=${P:-20}
PAR=${PAR:-0}
PM=${PM:-0}
LIBCNI=${LIBCNI:-0}
GO=${GO:-go}
while getopts ':n:pP:mlh' opt; do
	case $opt in
	n) N=$OPTARG ;;
	p) PAR=1 ;;
	m) PM=1 ;;
	l) LIBCNI=1 ;;
	P)
		P=$OPTARG
		PAR=1
		;;
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
shift $((OPTIND - 1))
if (($# > 0)); then
	usage >&2
	exit 2
fi
[[ $N =~ ^[1-9][0-9]{0,3}$ ]] || die "-n wants an integer in 1..9999, got '$N'"
[[ $P =~ ^[1-9][0-9]{0,3}$ ]] || die "-P wants an integer in 1..9999, got '$P'"
[[ $PAR == 0 || $PAR == 1 ]] || die "PAR must be 0 or 1, got '$PAR'"
[[ $PM == 0 || $PM == 1 ]] || die "PM must be 0 or 1, got '$PM'"
[[ $LIBCNI == 0 || $LIBCNI == 1 ]] || die "LIBCNI must be 0 or 1, got '$LIBCNI'"

[[ $(id -u) == 0 ]] || die "run as root: it creates network namespaces"
command -v ip >/dev/null || die "needs ip (iproute2)"
command -v "$GO" >/dev/null || die "needs go ($GO)"

HPFX=bbench-host-$$-
CPFX=bbench-c-$$-
CSV=$OUT/timings-$STAMP.csv
SUMMARY=$OUT/summary-$STAMP.txt

IMPLS=(upstream berth)
# "floor" is not an implementation: cnitool running host-local as the only
# plugin, the fixed cost every exec-delegating bridge + host-local chain pays
# (cnitool, libcni, a plugin exec, the lease). Subtracting it leaves the time
# the bridge plugin itself adds.
#
# Each of the three has its own throwaway host namespace, so with the
# samples interleaved none sees the others' bridges, veths or netfilter
# state, and the netfilter counts below are each implementation's own.
declare -A TAG=([upstream]=u [berth]=b [floor]=f)
declare -A NET=([upstream]=bbench-up-$$ [berth]=bbench-be-$$ [floor]=bbench-fl-$$)
declare -A BINDIR=([upstream]=$UP_BIN [berth]=$BERTH_BIN [floor]=$UP_BIN)
declare -A HOSTNS=([upstream]=${HPFX}u [berth]=${HPFX}b [floor]=${HPFX}f)
# LIB is "" for the cnitool samples, "-libcni" for the libcni ones (-l):
# FAILED, the sample files and the CSV ops are keyed IMPL$LIB.
LIBS=("")
((LIBCNI)) && LIBS+=(-libcni)
declare -A FAILED=()   # impl$lib -> why it has no (complete) numbers
declare -A BACKEND=()  # impl -> masquerade backend seen
declare -A PARWALL=()  # impl,op -> wall-clock ns of the concurrent run
declare -A RULES=()    # impl -> netfilter size with its N containers attached

TMP=""
MADE_CNI_DIRS=()

cleanup() {
	local rc=$? ns d
	local -a all=()
	set +e
	trap - EXIT INT TERM
	# Only our own namespaces, by exact name or our PID-scoped prefix. List
	# first, then delete.
	mapfile -t all < <(ip netns list 2>/dev/null | awk '{ print $1 }')
	for ns in "${all[@]}"; do
		case $ns in
		"$HPFX"* | "$CPFX"*) ip netns del "$ns" 2>/dev/null || log "could not delete netns $ns" ;;
		esac
	done
	rm -f "$RESULTS_DIR/${NET[upstream]}-"* "$RESULTS_DIR/${NET[berth]}-"* "$RESULTS_DIR/${NET[floor]}-"*
	for d in "${MADE_CNI_DIRS[@]}"; do rmdir "$d" 2>/dev/null; done
	[[ -n $TMP ]] && rm -rf "$TMP"
	exit "$rc"
}
on_exit cleanup

mkdir -p "$OUT" "$UP_BIN"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/bbench.XXXXXX")
for d in /var/lib/cni "$RESULTS_DIR"; do
	[[ -d $d ]] || MADE_CNI_DIRS=("$d" "${MADE_CNI_DIRS[@]}")
done

# --- build: upstream plugins, cnitool, the timing wrapper -------------------

cd "$ROOT"
build_tools
if ((LIBCNI)); then
	"$GO" build -o "$CNIDRIVE" ./bench/cnidrive || die "building bench/cnidrive failed"
fi

missing=()
for f in bridge host-local; do
	[[ -x $BERTH_BIN/$f ]] || missing+=("$f")
done
if ((${#missing[@]} > 0)); then
	for lib in "${LIBS[@]}"; do FAILED[berth$lib]="no ${missing[*]} in $BERTH_BIN: run 'make build' first"; done
fi

# --- configs ------------------------------------------------------------------

# conflist IMPL BRIDGE SUBNET [EXTRA-JSON]: write the network config of IMPL.
conflist() {
	local impl=$1 br=$2 subnet=$3 extra=${4:-} pmextra=${5:-} portmap=""
	mkdir -p "$TMP/net-$impl"
	if ((PM)); then
		portmap=',
    {
      "type": "portmap",
      "capabilities": { "portMappings": true }'"$pmextra"'
    }'
	fi
	cat >"$TMP/net-$impl/${NET[$impl]}.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "${NET[$impl]}",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$br",
      "isGateway": true,
      "ipMasq": true,${extra}
      "ipam": {
        "type": "host-local",
        "subnet": "$subnet",
        "dataDir": "$TMP/ipam-$impl"
      }
    }$portmap
  ]
}
EOF
}
conflist upstream bup0 10.77.0.0/16
mkdir -p "$TMP/net-floor"
cat >"$TMP/net-floor/${NET[floor]}.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "${NET[floor]}",
  "plugins": [
    {
      "type": "host-local",
      "ipam": { "type": "host-local", "subnet": "10.76.0.0/16", "dataDir": "$TMP/ipam-floor" }
    }
  ]
}
EOF
conflist berth bbe0 10.78.0.0/16 "
      \"dataDir\": \"$TMP/berth-state\"," ",
      \"dataDir\": \"$TMP/berth-ports\""

# --- namespaces (created up front, never timed) -------------------------------

# Containers: CPFX + tag + i (cnitool), + "l" + i (libcni), + "p" + i
# (concurrent, not for floor); "w" instead of i for the warm-up.
nsnames=()
for impl in "${IMPLS[@]}" floor; do
	t=${TAG[$impl]}
	nsnames+=("$CPFX${t}w")
	for ((i = 1; i <= N; i++)); do nsnames+=("$CPFX$t$i"); done
	if ((LIBCNI)); then
		nsnames+=("$CPFX${t}lw")
		for ((i = 1; i <= N; i++)); do nsnames+=("$CPFX${t}l$i"); done
	fi
	if ((PAR)) && [[ $impl != floor ]]; then
		for ((i = 1; i <= P; i++)); do nsnames+=("$CPFX${t}p$i"); done
	fi
done
log "creating ${#nsnames[@]} container namespaces + 3 host namespaces ${HPFX}{u,b,f}"
for impl in "${IMPLS[@]}" floor; do ip netns add "${HOSTNS[$impl]}"; done
for ns in "${nsnames[@]}"; do ip netns add "$ns"; done

# --- measuring ----------------------------------------------------------------

echo "impl,op,seq,ns" >"$CSV"

# cnicmd IMPL OP NETNS [PORT]: the benchtime arguments (after -o FILE) of
# one cnitool call in IMPL's host namespace: benchtime joins only that
# network namespace (like nsenter --net; ip netns exec would also unshare
# and remount /sys, ~2 ms a call, and neither plugin reads /sys) and sets
# cnitool's environment itself, so its timed region is the cnitool process
# alone. With -m, PORT is the host port the container publishes (to its
# port 80), passed as runtimes do: the portMappings capability argument, on
# ADD and DEL.
cnicmd() {
	local impl=$1 op=$2 cns=$3 port=${4:-0} cap=""
	if ((PM)) && [[ $impl != floor ]]; then
		cap='{"portMappings":[{"hostPort":'$port',"containerPort":80,"protocol":"tcp"}]}'
	fi
	CMD=(-netns "/var/run/netns/${HOSTNS[$impl]}" "NETCONFPATH=$TMP/net-$impl" "CNI_PATH=${BINDIR[$impl]}"
		CNI_IFNAME=eth0 ${cap:+"CAP_ARGS=$cap"} "$CNITOOL" "$op" "${NET[$impl]}" "/var/run/netns/$cns")
}

# failmsg IMPL OP NETNS ERRFILE [OUTFILE]: record and print a failed call.
failmsg() {
	local impl=$1 op=$2 cns=$3 errf=$4 outf=${5:-}
	FAILED[$impl]="cnitool $op failed (netns $cns): $(head -n1 "$errf")"
	{
		printf '\nbench: %s: cnitool %s %s %s failed:\n' "$impl" "$op" "${NET[$impl]}" "/var/run/netns/$cns"
		sed 's/^/    /' "$errf"
		[[ -n $outf && -s $outf ]] && sed 's/^/    stdout: /' "$outf"
		printf '\n'
	} >&2
}

# timed IMPL OP SEQ NETNS [RESULTFILE]: one timed cnitool call. The wall time
# (ns) goes to the CSV and, for SEQ > 0, to the per-op sample file; SEQ 0 is
# the warm-up. Returns non-zero, after printing cnitool's error, on failure.
timed() {
	local impl=$1 op=$2 seq=$3 cns=$4 res=${5:-$TMP/stdout} t
	cnicmd "$impl" "$op" "$cns" $((20000 + seq))
	if ! "$BENCHTIME" -o "$TMP/t" "${CMD[@]}" >"$res" 2>"$TMP/stderr"; then
		failmsg "$impl" "$op" "$cns" "$TMP/stderr" "$res"
		return 1
	fi
	read -r t <"$TMP/t"
	echo "$impl,$op,$seq,$t" >>"$CSV"
	if ((seq > 0)); then echo "$t" >>"$TMP/$impl-$op.ns"; fi
}

# nft_tables IMPL: the nftables tables of IMPL's host namespace, one per line.
nft_tables() {
	command -v nft >/dev/null || return 0
	ip netns exec "${HOSTNS[$1]}" nft list tables 2>/dev/null | sort || true
}

# masq_backend IMPL TABLES-BEFORE: which masquerade backend IMPL used, judged
# from its host namespace's state while its N containers are attached.
masq_backend() {
	local impl=$1 before=$2 rules="" tables new
	if command -v iptables >/dev/null; then
		rules=$(ip netns exec "${HOSTNS[$impl]}" iptables -w -t nat -S POSTROUTING 2>/dev/null || true)
	fi
	tables=$(nft_tables "$impl")
	new=$(comm -13 <(printf '%s\n' "$before") <(printf '%s\n' "$tables") | sed 's/^table //' | paste -sd, -)
	if [[ $impl == upstream && $rules == *"-j CNI-"* ]]; then
		echo "iptables ($(iptables --version 2>/dev/null))"
	elif [[ $impl == upstream && $tables == *"inet cni_plugins_masquerade"* ]]; then
		echo "nftables (table inet cni_plugins_masquerade)"
	elif [[ $impl == berth && -n $new ]]; then
		echo "nftables (new tables: $new)"
	elif ! command -v nft >/dev/null; then
		echo "not checked (no nft binary to look)"
	else
		echo "unknown: no masquerade rules seen"
	fi
}

# rule_counts IMPL: the netfilter size of IMPL's host namespace, as "R
# rules, E elements": nft rules in every table (iptables-nft's rules are
# nft rules too) and set/map elements that name a container.
rule_counts() {
	command -v nft >/dev/null || {
		echo "not counted (no nft binary)"
		return
	}
	ip netns exec "${HOSTNS[$1]}" nft -a list ruleset 2>/dev/null | awk '
		/# handle [0-9]+$/ && !/[{]/ { rules++ }
		{ elems += gsub(/id=[^ "]+/, "") }
		END { printf "%d rules, %d elements\n", rules, elems }'
}

# running: the implementations whose cnitool samples are still coming.
running() {
	local impl
	RUNNING=()
	for impl in "${IMPLS[@]}" floor; do
		[[ -n ${FAILED[$impl]:-} ]] || RUNNING+=("$impl")
	done
}

# run_seq: the sequential cnitool samples, interleaved so that the three
# share the machine's drift: a warm-up ADD+DEL per implementation, then
# for container i = 1..N upstream ADD i, berth ADD i, floor ADD i, then
# the DELs in the same order. The netfilter checks run with every
# implementation's N containers attached (after the ADDs, before the DELs).
# An implementation whose call fails (timed records it in FAILED) is
# skipped from then on; its containers stay until the exit trap.
run_seq() {
	local impl i op
	local -A before=()
	running
	log "cnitool: warm-up ADD+DEL each, then $N ADDs, then $N DELs, interleaved (${RUNNING[*]})"
	for impl in "${RUNNING[@]}"; do
		before[$impl]=$(nft_tables "$impl")
		: >"$TMP/$impl-add.ns"
		: >"$TMP/$impl-del.ns"
		if timed "$impl" add 0 "$CPFX${TAG[$impl]}w" "$OUT/result-$impl.json"; then
			timed "$impl" del 0 "$CPFX${TAG[$impl]}w" || true
		fi
	done
	for op in add del; do
		for ((i = 1; i <= N; i++)); do
			running
			for impl in "${RUNNING[@]}"; do
				timed "$impl" "$op" "$i" "$CPFX${TAG[$impl]}$i" || true
			done
		done
		[[ $op == add ]] || continue
		running
		for impl in "${RUNNING[@]}"; do
			[[ $impl != floor ]] || continue
			BACKEND[$impl]=$(masq_backend "$impl" "${before[$impl]}")
			RULES[$impl]=$(rule_counts "$impl")
		done
	done
}

# run_libcni: the same chains driven by libcni in-process (bench/cnidrive,
# one process for all three, interleaved the same way: warm-ups, then ADD
# i of each, then DEL i of each), on their own containers CPFX tag l i.
# Its samples go to the CSV as ops libcni-add and libcni-del.
run_libcni() {
	local impl rc=0 add del
	local -a args=()
	for impl in "${IMPLS[@]}" floor; do
		[[ -z ${FAILED[$impl-libcni]:-} ]] || continue
		args+=(-chain "label=$impl,hostns=/var/run/netns/${HOSTNS[$impl]},net=${NET[$impl]},confdir=$TMP/net-$impl,cni-path=${BINDIR[$impl]},netns-prefix=$CPFX${TAG[$impl]}l")
	done
	((${#args[@]} > 0)) || return 0
	((PM)) && args+=(-hostport 20000)
	log "libcni: warm-up ADD+DEL each, then $N ADDs, then $N DELs, interleaved, in one bench/cnidrive process"
	"$CNIDRIVE" -n "$N" -o "$TMP/libcni.csv" "${args[@]}" 2>"$TMP/libcni.err" || rc=$?
	if [[ -s $TMP/libcni.err ]]; then
		log "bench/cnidrive's stderr (its own and the plugins'):"
		sed 's/^/    /' "$TMP/libcni.err" >&2
	fi
	[[ -f $TMP/libcni.csv ]] || : >"$TMP/libcni.csv"
	awk -F, -v OFS=, '{ print $1, "libcni-" $2, $3, $4 }' "$TMP/libcni.csv" >>"$CSV"
	for impl in "${IMPLS[@]}" floor; do
		[[ -z ${FAILED[$impl-libcni]:-} ]] || continue
		awk -F, -v i="$impl" '$1 == i && $2 == "add" && $3 > 0 { print $4 }' "$TMP/libcni.csv" >"$TMP/$impl-libcni-add.ns"
		awk -F, -v i="$impl" '$1 == i && $2 == "del" && $3 > 0 { print $4 }' "$TMP/libcni.csv" >"$TMP/$impl-libcni-del.ns"
		add=$(wc -l <"$TMP/$impl-libcni-add.ns")
		del=$(wc -l <"$TMP/$impl-libcni-del.ns")
		if ((add != N || del != N)); then
			FAILED[$impl-libcni]=$(grep -m1 "^cnidrive: $impl:" "$TMP/libcni.err" ||
				echo "cnidrive exited $rc after $add ADDs, $del DELs: $(head -n1 "$TMP/libcni.err")")
		fi
	done
}

# run_par IMPL OP: P concurrent cnitool calls (each under benchtime, in
# IMPL's host namespace), wall clock from before the first start to after
# the last exit (date(1) costs ~1 ms of it).
run_par() {
	local impl=$1 op=$2 t=${TAG[$1]} i t0 t1 bad=0
	local -a pids=()
	t0=$(date +%s%N)
	for ((i = 1; i <= P; i++)); do
		cnicmd "$impl" "$op" "$CPFX${t}p$i" $((30000 + i))
		"$BENCHTIME" -o "$TMP/par-$i.t" "${CMD[@]}" >"$TMP/par-$i.out" 2>"$TMP/par-$i.err" &
		pids+=($!)
	done
	for i in "${!pids[@]}"; do
		wait "${pids[$i]}" || {
			bad=1
			failmsg "$impl" "$op" "$CPFX${t}p$((i + 1))" "$TMP/par-$((i + 1)).err" "$TMP/par-$((i + 1)).out"
		}
	done
	t1=$(date +%s%N)
	((bad == 0)) || return 1
	PARWALL[$impl,$op]=$((t1 - t0))
	echo "$impl,par-$op,$P,$((t1 - t0))" >>"$CSV"
}

# Called with || so that set -e is off in them: a failed check or call
# marks its implementation in FAILED and the run goes on.
run_seq || true
if ((LIBCNI)); then run_libcni || true; fi
if ((PAR)); then
	for impl in "${IMPLS[@]}"; do
		[[ -z ${FAILED[$impl]:-} ]] || continue
		log "$impl: $P concurrent ADDs, then $P concurrent DELs"
		if run_par "$impl" add; then run_par "$impl" del || true; fi
	done
fi

# --- report -------------------------------------------------------------------

# stats FILE: "p50 p95" in ms of the ns samples in FILE (median; p95 by
# nearest rank).
stats() {
	sort -n "$1" | awk '
		{ v[NR] = $1 }
		END {
			if (NR == 0) { print "- -"; exit }
			m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
			r = int((95 * NR + 99) / 100)
			printf "%.2f %.2f\n", m / 1e6, v[r] / 1e6
		}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
net_ratio() { awk -v a="$1" -v b="$2" -v f="$3" 'BEGIN { if (a - f > 0 && b - f > 0) printf "%.2f", (a - f) / (b - f); else printf "-" }'; }
ms() { awk -v n="$1" 'BEGIN { printf "%.1f", n / 1e6 }'; }

# table LIB FLOOR-NOTE: the p50/p95 rows, ratio, floor and net ratio of the
# sequential samples of one driver (LIB "": cnitool, "-libcni": libcni).
table() {
	local lib=$1 fnote=$2 impl a d i
	local -A S=()
	for impl in "${IMPLS[@]}" floor; do
		S[$impl]="- - - -"
		if [[ -z ${FAILED[$impl$lib]:-} ]]; then
			a=$(stats "$TMP/$impl$lib-add.ns")
			d=$(stats "$TMP/$impl$lib-del.ns")
			S[$impl]="$a $d"
		fi
	done
	printf '%-9s %8s %8s %8s %8s  (ms)\n' impl "ADD p50" "ADD p95" "DEL p50" "DEL p95"
	for impl in "${IMPLS[@]}"; do
		if [[ -n ${FAILED[$impl$lib]:-} ]]; then
			printf '%-9s FAILED: %s\n' "$impl" "${FAILED[$impl$lib]}"
		else
			# shellcheck disable=SC2086 # split the four numbers
			printf '%-9s %8s %8s %8s %8s\n' "$impl" ${S[$impl]}
		fi
	done
	local -a u b r=()
	read -r -a u <<<"${S[upstream]}"
	read -r -a b <<<"${S[berth]}"
	for i in 0 1 2 3; do r+=("$(ratio "${b[$i]}" "${u[$i]}")"); done
	printf '%-9s %8s %8s %8s %8s  (berth/upstream; < 1 = berth faster)\n' ratio "${r[@]}"
	local -a f
	read -r -a f <<<"${S[floor]}"
	if [[ -n ${FAILED[floor$lib]:-} ]]; then
		printf '%-9s FAILED: %s\n' floor "${FAILED[floor$lib]}"
	else
		# shellcheck disable=SC2086 # split the four numbers
		printf '%-9s %8s %8s %8s %8s  (%s)\n' floor ${S[floor]} "$fnote"
		r=()
		for i in 0 2; do r+=("$(net_ratio "${b[$i]}" "${u[$i]}" "${f[$i]}")"); done
		printf '%-9s %8s %8s %8s %8s  ((berth-floor)/(upstream-floor): the bridge plugin'"'"'s own time)\n' "net ratio" "${r[0]}" "" "${r[1]}" ""
	fi
}

report() {
	local impl a d
	local chain="bridge + host-local"
	((PM)) && chain="bridge + host-local + portmap (one host port per container)"
	echo "chain: $chain, N=$N, sequential (cniVersion 1.0.0, isGateway, ipMasq)"
	table "" "cnitool + host-local alone: the fixed cost of both chains"
	if ((LIBCNI)); then
		echo
		echo "via libcni in-process (as containerd/kubelet call plugins), N=$N, sequential"
		table -libcni "libcni + host-local alone: the fixed cost of both chains"
	fi
	if ((PAR)); then
		echo
		echo "concurrent: $P ADDs at once, then $P DELs at once, wall clock"
		printf '%-9s %8s %8s  (ms)\n' impl "ADD" "DEL"
		for impl in "${IMPLS[@]}"; do
			a=-
			d=-
			[[ -z ${PARWALL[$impl,add]:-} ]] || a=$(ms "${PARWALL[$impl,add]}")
			[[ -z ${PARWALL[$impl,del]:-} ]] || d=$(ms "${PARWALL[$impl,del]}")
			printf '%-9s %8s %8s\n' "$impl" "$a" "$d"
		done
		printf '%-9s %8s %8s\n' ratio "$(ratio "${PARWALL[berth,add]:-0}" "${PARWALL[upstream,add]:-0}")" \
			"$(ratio "${PARWALL[berth,del]:-0}" "${PARWALL[upstream,del]:-0}")"
	fi
	if ((N >= 100)); then
		echo
		echo "growth: ADD median of containers 1-50 vs $((N - 49))-$N (the last ones find $((N - 50))+ attached)"
		printf '%-9s %8s %8s %8s\n' impl "first50" "last50" "last/first"
		for impl in "${IMPLS[@]}"; do
			[[ -z ${FAILED[$impl]:-} ]] || continue
			head -n 50 "$TMP/$impl-add.ns" >"$TMP/first"
			tail -n 50 "$TMP/$impl-add.ns" >"$TMP/last"
			read -r a _ < <(stats "$TMP/first")
			read -r d _ < <(stats "$TMP/last")
			printf '%-9s %8s %8s %8s\n' "$impl" "$a" "$d" "$(ratio "$d" "$a")"
		done
	fi
	echo
	echo "netfilter with $N containers attached (nft -a list ruleset of the host namespace):"
	for impl in "${IMPLS[@]}"; do
		printf '  %-9s %s\n' "$impl" "${RULES[$impl]:-not reached}"
	done
	echo
	echo "notes:"
	echo "- each sample is one 'cnitool add|del' process, fork+exec+wait timed by bench/benchtime"
	echo "  (monotonic ns), which joins the host namespace and sets cnitool's environment before"
	echo "  its clock starts (no nsenter or env(1) in the sample); the floor row is the same for a"
	echo "  host-local-only chain, the part of every sample neither bridge plugin can avoid"
	echo "- samples are interleaved: for container i, upstream ADD i, berth ADD i, floor ADD i,"
	echo "  then the DELs in the same order; each implementation has its own host namespace"
	if ((LIBCNI)); then
		echo "- libcni rows: one AddNetworkList/DelNetworkList call each, timed in-process by"
		echo "  bench/cnidrive (one process for all three, interleaved the same way, on their own"
		echo "  containers): libcni, the plugin execs and its result cache; no cnitool process"
	fi
	if ((PAR)); then
		echo "- concurrent: each call is a cnitool under benchtime; the wall clock includes starting them"
	fi
	echo "- upstream: $UPMOD $UPVER built here (bridge, host-local);"
	echo "  berth: ${BERTH_BIN#"$ROOT"/}/ (berth bridge, host-local from make build); each ran one"
	echo "  warm-up ADD+DEL first (in the CSV as seq 0, not in the stats)"
	if command -v iptables >/dev/null; then
		echo "- upstream ipMasq backend (default): ${BACKEND[upstream]:-not reached}"
	else
		echo "- iptables is NOT installed: upstream's default ipMasq backend falls back to nftables;"
		echo "  seen: ${BACKEND[upstream]:-not reached}"
	fi
	echo "- berth ipMasq backend (default, nftables in-process): ${BACKEND[berth]:-not reached}"
	echo "- host: $(uname -r), $(nproc) CPUs, loadavg $(cut -d' ' -f1-3 /proc/loadavg)"
	echo "- raw per-call timings: ${CSV#"$ROOT"/}"
}

report | tee "$SUMMARY"
ln -sfn "$(basename "$CSV")" "$OUT/timings-latest.csv"
ln -sfn "$(basename "$SUMMARY")" "$OUT/summary-latest.txt"

if ((${#FAILED[@]} > 0)); then
	for lib in "${LIBS[@]}"; do
		for impl in "${IMPLS[@]}" floor; do
			[[ -z ${FAILED[$impl$lib]:-} ]] || printf 'bench: %s%s: %s\n' "$impl" "${lib/-/ via }" "${FAILED[$impl$lib]}" >&2
		done
	done
	exit 1
fi
