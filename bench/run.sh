#!/usr/bin/env bash
# bench/run.sh: load benchmark of the oidc handler behind Caddy's reverse_proxy.
#
# usage: bench/run.sh            (from anywhere; ~4.5 minutes with the defaults)
#        CADDY_BIN=/path/to/new/caddy COMPARE=/path/to/old/caddy bench/run.sh
#                                 (two builds in one run; twice as long)
#
# Builds ./caddy when needed (./xcaddy.sh build --with-redis; not with
# CADDY_BIN), bench/upstream
# (200 "ok" to everything) and bench/op (internal/testop's OpenID Provider,
# which also logs in through Caddy and writes the credentials), starts Caddy
# with four sites on loopback, all reverse_proxy to the same upstream:
#
#   plain   no authentication
#   cookie  oidc, sealed cookie session (Cookie header)
#   bearer  the same oidc config, a provider JWT access token (Authorization)
#   azat    oidc { ... azat }, an AZAT minted by /auth/token (Authorization)
#   oracle  no authentication, but reverse_proxy forwards what oidc would:
#           static header_up lines for Authorization (a token of the same
#           size) and the X-Auth-Request-* identity headers, and the
#           client's Cookie removed: the limit for any authenticating proxy
#           in Caddy. Scenarios oracle-cookie, oracle-bearer, oracle-azat
#           send it the same request header as cookie, bearer, azat.
#
# then runs wrk against each, ROUNDS times interleaved with plain (plain,
# cookie, plain, bearer, plain, azat, plain, ...), and prints a Markdown table
# of the medians over the rounds: req/s, p50, p99, and the median of each
# run's req/s relative to the plain runs just before and after it (paired
# ratios: the machine's speed drifts within minutes), and for cookie,
# bearer and azat the median over the rounds of their req/s relative to
# their oracle-* run of the same round. Everything it starts is
# stopped on exit; no traffic leaves 127.0.0.1.
#
# Environment:
#   DURATION=4s       length of each measured wrk run
#   ROUNDS=8          measured runs per scenario (interleaved with plain)
#   WARMUP=2s         one unmeasured run per scenario first ("0" skips it)
#   THREADS=2 CONNS=32  wrk -t / -c
#   SCENARIOS="plain cookie bearer azat"  which ones (plain is needed for the
#                     ratio); also plain-cookie, plain-bearer, plain-azat: the
#                     plain site sent the same header as cookie/bearer/azat
#                     (ignored there), to tell the cost of the bigger request
#                     from the cost of the oidc handler; oracle-cookie,
#                     oracle-bearer, oracle-azat (see oracle above)
#   PORT_BASE=18180   sites on +1..+5, upstream +10, admin +18, OP +19
#                     (with COMPARE, its sites, admin and OP on +21..+39)
#   PROFILE="cookie"  after the measured rounds, enable Caddy's admin endpoint
#                     (127.0.0.1:PORT_BASE+18) and, for each listed scenario,
#                     take a CPU profile (PROFILE_SECONDS=10) while wrk runs;
#                     prints `go tool pprof -top` and keeps the profiles in
#                     bench/out/. The admin endpoint is off otherwise.
#   QUIET_WAIT=60     before measuring, wait up to this many seconds for the
#                     rest of the machine to be quiet (< QUIET_MAX=10 % CPU
#                     over 2 s); other builds and tests running alongside
#                     skew the numbers (each run reports how much CPU the
#                     processes it did not start used)
#   RETRIES=6         a run during which other processes used >= QUIET_MAX %
#                     CPU is done again, after waiting up to QUIET_WAIT/2 s for
#                     quiet; at most RETRIES times in all
#   OIDC_OPTS="..."   one more subdirective for the three oidc blocks, to
#                     measure a variant, e.g. OIDC_OPTS="pass_token none" or
#                     OIDC_OPTS="session store"
#   KEEP=1            keep the work dir (Caddyfile, logs, raw wrk output)
#   CADDY_BIN=PATH    the Caddy binary to measure (and profile) instead of
#                     ./caddy; the build is skipped. It needs http.handlers.oidc
#                     with the subdirectives the Caddyfile below uses (it is
#                     validated first). bench/op and bench/upstream are always
#                     built from this tree.
#   COMPARE=PATH      a second Caddy binary, the baseline ("before"): it gets
#                     its own Caddy, OP and credentials on PORT_BASE+20..+39
#                     (upstream shared), and every run of every round is made
#                     against both binaries back to back (CADDY_BIN first in
#                     odd rounds, COMPARE first in even ones). Prints the table
#                     for each binary, then per scenario the median over the
#                     runs of req/s(CADDY_BIN) / req/s(COMPARE) of each pair
#                     of back-to-back runs (after/before) and its range, and
#                     the ratio of Caddy CPU µs/req. With PROFILE, both are
#                     profiled (bench/out/cpu-S.pprof, cpu-S.compare.pprof).
set -euo pipefail
CADDY_BIN=${CADDY_BIN:-}
COMPARE=${COMPARE:-}
for v in CADDY_BIN COMPARE; do # relative to the caller's directory: make absolute
	[[ -z ${!v} ]] && continue
	[[ -f ${!v} && -x ${!v} ]] || { echo "bench/run.sh: $v=${!v} is not an executable file" >&2; exit 1; }
	printf -v "$v" %s "$(realpath "${!v}")"
done
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-4s}
ROUNDS=${ROUNDS:-8}
WARMUP=${WARMUP:-2s}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
SCENARIOS=${SCENARIOS:-plain cookie bearer azat}
PORT_BASE=${PORT_BASE:-18180}
PROFILE=${PROFILE:-}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
KEEP=${KEEP:-}
QUIET_WAIT=${QUIET_WAIT:-60}
QUIET_MAX=${QUIET_MAX:-10}
RETRIES=${RETRIES:-6}

HOST=127.0.0.1
P_UPSTREAM=$((PORT_BASE + 10))
# Instance 0 is CADDY_BIN (or ./caddy), instance 1 COMPARE: each has its own
# Caddy, OP, credentials and work dir $WORK/<i>; use_instance sets the
# globals below for one of them.
BINS=("${CADDY_BIN:-$ROOT/caddy}")
[[ -n $COMPARE ]] && BINS+=("$COMPARE")
INSTANCES=$(seq 0 $((${#BINS[@]} - 1)))
CADDY_PIDS=()
use_instance() { # i
	local b=$((PORT_BASE + 20 * $1))
	CUR=$1
	IBIN=${BINS[$1]}
	IDIR=${WORK:-}/$1
	P_PLAIN=$((b + 1))
	P_COOKIE=$((b + 2))
	P_BEARER=$((b + 3))
	P_AZAT=$((b + 4))
	P_ORACLE=$((b + 5))
	P_ADMIN=$((b + 18))
	P_OP=$((b + 19))
	CADDY_PID=${CADDY_PIDS[$1]:-}
}
use_instance 0
label_of() { # i -> CADDY_BIN or COMPARE, as the tables name them
	if [[ $1 == 1 ]]; then echo COMPARE; elif [[ -n $CADDY_BIN ]]; then echo CADDY_BIN; else echo ./caddy; fi
}

die() {
	echo "bench/run.sh: $*" >&2
	exit 1
}
say() { echo "bench/run.sh: $*" >&2; }

port_of() {
	case $1 in
	plain | plain-cookie | plain-bearer | plain-azat) echo "$P_PLAIN" ;;
	cookie) echo "$P_COOKIE" ;;
	bearer) echo "$P_BEARER" ;;
	azat) echo "$P_AZAT" ;;
	oracle-cookie | oracle-bearer | oracle-azat) echo "$P_ORACLE" ;;
	*) die "unknown scenario $1" ;;
	esac
}
for s in $SCENARIOS; do port_of "$s" >/dev/null; done
[[ " $SCENARIOS " == *" plain "* ]] || die "SCENARIOS must include plain (the ratio's reference)"

command -v go >/dev/null || die "Go is needed"
command -v curl >/dev/null || die "curl is needed"
if ! command -v wrk >/dev/null; then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		say "installing wrk (Debian package)"
		apt-get install -y wrk >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y wrk >/dev/null; }
	fi
	command -v wrk >/dev/null || die "wrk is needed (apt-get install -y wrk)"
fi

port_busy() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }
port_busy "$P_UPSTREAM" && die "$HOST:$P_UPSTREAM is already in use (set PORT_BASE=...)"
for i in $INSTANCES; do
	use_instance "$i"
	for p in "$P_PLAIN" "$P_COOKIE" "$P_BEARER" "$P_AZAT" "$P_ORACLE" "$P_OP" "$P_ADMIN"; do
		port_busy "$p" && die "$HOST:$p is already in use (set PORT_BASE=...)"
	done
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/caddy-oidc-bench.XXXXXX")
PIDS=()
cleanup() {
	local rc=$?
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for _ in $(seq 1 50); do
		local alive=no
		for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=yes; done
		[[ $alive == no ]] && break
		sleep 0.1
	done
	for p in "${PIDS[@]}"; do
		kill -9 "$p" 2>/dev/null || true
	done
	wait 2>/dev/null || true
	if [[ -n $KEEP || $rc != 0 ]]; then
		say "work dir kept: $WORK"
	else
		rm -rf "$WORK"
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---- build --------------------------------------------------------------

if [[ -n $CADDY_BIN ]]; then
	say "CADDY_BIN=$CADDY_BIN: not building ./caddy"
else
	./xcaddy.sh build --with-redis >&2
fi
say "building bench/upstream and bench/op"
go build -o "$WORK/upstream" ./bench/upstream
go build -o "$WORK/op" ./bench/op

# ---- start --------------------------------------------------------------

wait_up() { # URL PID NAME LOG
	for _ in $(seq 1 300); do
		kill -0 "$2" 2>/dev/null || { tail -n 30 "$4" >&2; die "$3 exited at start-up"; }
		curl -s -o /dev/null --max-time 2 "$1" && return 0
		sleep 0.1
	done
	tail -n 30 "$4" >&2
	die "$3 did not answer on $1"
}

ORACLE_TOKEN=$(head -c 675 /dev/urandom | base64 -w0 | tr '+/' '-_' | head -c 900)
write_caddyfile() { # ADMIN(off|addr), for the current instance, into $IDIR
	local oidc="issuer http://$HOST:$P_OP
		client_id demo
		client_secret demo-secret
		scopes openid profile email offline_access${OIDC_OPTS:+
		$OIDC_OPTS}"
	cat >"$IDIR/Caddyfile" <<EOF
{
	admin $1
	auto_https off
	persist_config off
	storage file_system $IDIR/data
	log {
		level ERROR
	}
}

# plain: reverse_proxy only
http://$HOST:$P_PLAIN {
	bind $HOST
	reverse_proxy $HOST:$P_UPSTREAM
}

# cookie: oidc with a cookie session
http://$HOST:$P_COOKIE {
	bind $HOST
	oidc {
		$oidc
	}
	reverse_proxy $HOST:$P_UPSTREAM
}

# bearer: the same oidc config, used with a provider JWT access token
http://$HOST:$P_BEARER {
	bind $HOST
	oidc {
		$oidc
	}
	reverse_proxy $HOST:$P_UPSTREAM
}

# oracle: what an authenticating proxy forwards, from static lines (the
# user's identity headers as oidc sends them, a provider token of 900 bytes)
http://$HOST:$P_ORACLE {
	bind $HOST
	reverse_proxy $HOST:$P_UPSTREAM {
		header_up -Cookie
		header_up Authorization "Bearer $ORACLE_TOKEN"
		header_up X-Auth-Request-User id1
		header_up X-Auth-Request-Email test-user@zitadel.ch
		header_up X-Auth-Request-Preferred-Username test-user@localhost
		header_up X-Auth-Request-Groups admin,users
	}
}

# azat: oidc with AZATs, used with an AZAT
http://$HOST:$P_AZAT {
	bind $HOST
	oidc {
		$oidc
		azat
	}
	reverse_proxy $HOST:$P_UPSTREAM
}
EOF
}

for i in $INSTANCES; do
	use_instance "$i"
	mkdir -p "$IDIR/hdr"
	ADMIN=off
	[[ -n $PROFILE ]] && ADMIN=$HOST:$P_ADMIN
	write_caddyfile "$ADMIN"
	"$IBIN" validate --config "$IDIR/Caddyfile" --adapter caddyfile >"$IDIR/validate.log" 2>&1 ||
		{ cat "$IDIR/validate.log" >&2; die "the Caddyfile is invalid for $IBIN"; }
done

"$WORK/upstream" -addr "$HOST:$P_UPSTREAM" >"$WORK/upstream.log" 2>&1 &
UPSTREAM_PID=$!
PIDS+=("$UPSTREAM_PID")
wait_up "http://$HOST:$P_UPSTREAM/" "$UPSTREAM_PID" upstream "$WORK/upstream.log"

for i in $INSTANCES; do
	use_instance "$i"
	# The OP starts first (Caddy discovers it at start-up), then waits for
	# the sites and writes cookie.hdr, bearer.hdr, azat.hdr.
	"$WORK/op" -addr "$HOST:$P_OP" -access-token-lifetime 1h -out "$IDIR/hdr" \
		-cookie-site "http://$HOST:$P_COOKIE" -bearer-site "http://$HOST:$P_BEARER" \
		-azat-site "http://$HOST:$P_AZAT" >"$IDIR/op.log" 2>&1 &
	OP_PID=$!
	PIDS+=("$OP_PID")
	wait_up "http://$HOST:$P_OP/.well-known/openid-configuration" "$OP_PID" "the OP" "$IDIR/op.log"

	XDG_DATA_HOME="$IDIR/data" XDG_CONFIG_HOME="$IDIR/config" \
		"$IBIN" run --config "$IDIR/Caddyfile" --adapter caddyfile >"$IDIR/caddy.log" 2>&1 &
	CADDY_PID=$!
	CADDY_PIDS[i]=$CADDY_PID
	PIDS+=("$CADDY_PID")
	wait_up "http://$HOST:$P_PLAIN/" "$CADDY_PID" "Caddy ($IBIN)" "$IDIR/caddy.log"

	for _ in $(seq 1 600); do
		[[ -f $IDIR/hdr/azat.hdr ]] && break
		kill -0 "$OP_PID" 2>/dev/null || { cat "$IDIR/op.log" >&2; tail -n 30 "$IDIR/caddy.log" >&2; die "bench/op failed"; }
		sleep 0.1
	done
	[[ -f $IDIR/hdr/azat.hdr ]] || { cat "$IDIR/op.log" >&2; die "no credentials after 60s"; }
	[[ -n $COMPARE ]] && say "$(label_of "$i"): $IBIN"
	sed 's/^/  /' "$IDIR/op.log" >&2
done

# ---- measure ------------------------------------------------------------

hdr_of() { # scenario -> header line ("" for plain)
	case $1 in
	plain) echo "" ;;
	plain-*) cat "$IDIR/hdr/${1#plain-}.hdr" ;;
	oracle-*) cat "$IDIR/hdr/${1#oracle-}.hdr" ;;
	*) cat "$IDIR/hdr/$1.hdr" ;;
	esac
}

run_wrk() { # scenario duration outfile
	local h port
	h=$(hdr_of "$1")
	port=$(port_of "$1")
	local args=(-t"$THREADS" -c"$CONNS" -d"$2" --latency)
	[[ -n $h ]] && args+=(-H "$h")
	wrk "${args[@]}" "http://$HOST:$port/" >"$3" 2>&1 || { cat "$3" >&2; die "wrk failed for $1"; }
	if grep -qE 'Non-2xx or 3xx responses|Socket errors' "$3"; then
		cat "$3" >&2
		die "$1: errors during the run (see above)"
	fi
}

# CPU accounting, in clock ticks: busy time of the whole machine, and of the
# processes this script started (Caddy, upstream, OP; wrk is timed apart).
TICK=$(getconf CLK_TCK)
busy_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9; exit}' /proc/stat; }
proc_ticks() { # PID... -> utime+stime summed
	local p t=0
	for p in "$@"; do
		t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
	done
	echo "$t"
}

# measure scenario duration outfile: runs wrk and writes outfile.cpu:
# "caddy_ticks ours_ticks busy_ticks wall_seconds upstream_ticks wrk_ticks".
measure() {
	local b0 c0 o0 u0 t0 b1 c1 o1 u1 t1 w
	b0=$(busy_ticks)
	c0=$(proc_ticks "$CADDY_PID")
	u0=$(proc_ticks "$UPSTREAM_PID")
	o0=$(proc_ticks "${PIDS[@]}")
	t0=$(date +%s.%N)
	local TIMEFORMAT='%U %S'
	w=$({ time run_wrk "$@" 2>&3; } 3>&2 2>&1)
	t1=$(date +%s.%N)
	b1=$(busy_ticks)
	c1=$(proc_ticks "$CADDY_PID")
	u1=$(proc_ticks "$UPSTREAM_PID")
	o1=$(proc_ticks "${PIDS[@]}")
	awk -v c=$((c1 - c0)) -v u=$((u1 - u0)) -v o=$((o1 - o0)) -v b=$((b1 - b0)) -v t0="$t0" -v t1="$t1" -v w="$w" -v tick="$TICK" \
		'BEGIN { split(w, a, " "); wt = (a[1] + a[2]) * tick
		printf "%d %d %d %.3f %d %d\n", c, o + wt, b, t1 - t0, u, wt }' >"$3.cpu"
}

# to_ms "1.23ms" -> 1.230
to_ms() {
	awk -v v="$1" 'BEGIN {
		n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
		if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
		printf "%.3f", n }'
}
parse() { # file -> "rps p50ms p99ms caddy_us/req other_cpu_% upstream_us/req wrk_us/req"
	local rps p50 p99 reqs cpu=0 other=0 ucpu=0 wcpu=0
	rps=$(awk '/^Requests\/sec:/ {print $2}' "$1")
	reqs=$(awk '/ requests in / {print $1}' "$1")
	if [[ -f $1.cpu && -n $reqs ]]; then
		read -r cpu other ucpu wcpu < <(awk -v reqs="$reqs" -v tick="$TICK" -v n="$(nproc)" '{
			f = 1e6 / tick / reqs
			other = 100 * ($3 - $2) / tick / ($4 * n); if (other < 0) other = 0
			printf "%.1f %.1f %.1f %.1f\n", $1 * f, other, $5 * f, $6 * f }' "$1.cpu")
	fi
	p50=$(awk '$1 == "50%" {print $2}' "$1")
	p99=$(awk '$1 == "99%" {print $2}' "$1")
	[[ -n $rps && -n $p50 && -n $p99 ]] || { cat "$1" >&2; die "cannot parse wrk output $1"; }
	echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu $other $ucpu $wcpu"
}
median() { sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

if [[ $WARMUP != 0 ]]; then
	say "warm-up: $WARMUP per scenario"
	for i in $INSTANCES; do
		use_instance "$i"
		for s in $SCENARIOS; do run_wrk "$s" "$WARMUP" "$IDIR/warmup-$s.txt"; done
	done
fi

# other_cpu SECONDS: % of the machine used meanwhile by processes this run did
# not start (ours are idle here, but count them anyway).
other_cpu() {
	local b0 o0 b1 o1
	b0=$(busy_ticks)
	o0=$(proc_ticks "${PIDS[@]}")
	sleep "$1"
	b1=$(busy_ticks)
	o1=$(proc_ticks "${PIDS[@]}")
	awk -v b=$((b1 - b0 - o1 + o0)) -v t="$1" -v tick="$TICK" -v n="$(nproc)" 'BEGIN { printf "%.0f", 100 * b / tick / t / n }'
}
# wait_quiet MAX_SECONDS: until other processes use < QUIET_MAX % CPU over 2 s.
wait_quiet() {
	local waited=0 busy
	[[ $1 == 0 ]] && return 0
	while :; do
		busy=$(other_cpu 2)
		waited=$((waited + 2))
		((busy < QUIET_MAX)) && return 0
		if ((waited >= $1)); then
			say "the machine is still busy (${busy}% CPU used by other processes); measuring anyway"
			return 0
		fi
		if ((waited == 2)); then
			say "waiting up to ${1}s for other processes to go below ${QUIET_MAX}% CPU (now ${busy}%)"
		fi
	done
}

wait_quiet "$QUIET_WAIT"
START=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
retries=$RETRIES
# Each round runs plain between every other scenario (plain s1 plain s2 ...
# plain), so that every run of a scenario has a plain run just before and
# just after it: see paired() below. With COMPARE, every run is made against
# both binaries back to back, in turn first (see compared() below); each
# binary's runs form the same sequence.
n=0
for r in $(seq 1 "$ROUNDS"); do
	seq_round=(plain)
	for s in $SCENARIOS; do
		[[ $s == plain ]] || seq_round+=("$s" plain)
	done
	order=$INSTANCES
	((r % 2 == 0)) && order=$(echo "$INSTANCES" | sort -rn)
	for s in "${seq_round[@]}"; do
	for i in $order; do
		use_instance "$i"
		n=$((n + 1))
		while :; do
			say "round $r/$ROUNDS: $s ($DURATION)${COMPARE:+, $(label_of "$i")}"
			measure "$s" "$DURATION" "$WORK/wrk-$n.txt"
			res=$(parse "$WORK/wrk-$n.txt")
			read -r rps p50 p99 cpu other ucpu wcpu <<<"$res"
			say "  $rps req/s, p50 ${p50}ms, p99 ${p99}ms; CPU/req: Caddy ${cpu}us, upstream ${ucpu}us, wrk ${wcpu}us; other processes ${other}% CPU"
			if awk -v o="$other" -v m="$QUIET_MAX" 'BEGIN { exit !(o >= m) }' && ((retries > 0)); then
				retries=$((retries - 1))
				say "  disturbed by other processes: run again ($retries retries left)"
				wait_quiet "$((QUIET_WAIT / 2))"
				continue
			fi
			break
		done
		echo "$res" >>"$IDIR/results-$s.txt"
		echo "$s $rps" >>"$IDIR/sequence.txt"
	done
	done
done

LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

col() { awk -v c="$2" '{print $c}' "$IDIR/results-$1.txt" | median; }
# paired S: for every run of S, its req/s over the mean req/s of the plain
# runs just before and just after it, as "median min max" over the runs.
# The machine's speed drifts by +-20 % within minutes (other tenants of the
# host); runs seconds apart see the same speed, so these ratios are far
# steadier than a ratio of medians.
paired() {
	awk -v s="$1" '{name[NR] = $1; rps[NR] = $2}
		END { for (i = 2; i < NR; i++) if (name[i] == s && name[i-1] == "plain" && name[i+1] == "plain")
			print rps[i] / ((rps[i-1] + rps[i+1]) / 2) }' "$IDIR/sequence.txt" >"$IDIR/ratios-$1.txt"
	[[ $1 == plain ]] && { echo "1 1 1"; return; }
	echo "$(median <"$IDIR/ratios-$1.txt") $(sort -g "$IDIR/ratios-$1.txt" | head -1) $(sort -g "$IDIR/ratios-$1.txt" | tail -1)"
}
# to_oracle S: for cookie, bearer, azat with oracle-S measured, each
# round's req/s of S over that round's oracle-S, as "median min max".
to_oracle() {
	[[ -f $IDIR/results-oracle-$1.txt ]] || { echo "- - -"; return; }
	paste -d' ' "$IDIR/results-$1.txt" "$IDIR/results-oracle-$1.txt" | awk '{print $1 / $8}' >"$IDIR/oracle-ratios-$1.txt"
	echo "$(median <"$IDIR/oracle-ratios-$1.txt") $(sort -g "$IDIR/oracle-ratios-$1.txt" | head -1) $(sort -g "$IDIR/oracle-ratios-$1.txt" | tail -1)"
}
for i in $INSTANCES; do
	use_instance "$i"
	{
		echo "| scenario | req/s | p50 (ms) | p99 (ms) | ratio to plain (paired, median) | paired min-max | ratio to its oracle (per round, median) | min-max | Caddy CPU µs/req |"
		echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
		for s in $SCENARIOS; do
			rps=$(col "$s" 1)
			read -r pm pmin pmax <<<"$(paired "$s")"
			read -r om omin omax <<<"$(to_oracle "$s")"
			awk -v s="$s" -v rps="$rps" -v p50="$(col "$s" 2)" -v p99="$(col "$s" 3)" -v cpu="$(col "$s" 4)" \
				-v pm="$pm" -v pmin="$pmin" -v pmax="$pmax" -v om="$om" -v omin="$omin" -v omax="$omax" \
				'BEGIN { o = (om == "-") ? "| - | -" : sprintf("| %.3fx | %.2f-%.2f", om, omin, omax)
				printf "| %s | %.0f | %.2f | %.2f | %.2fx | %.2f-%.2f %s | %.0f |\n", s, rps, p50, p99, pm, pmin, pmax, o, cpu }'
		done
	} >"$IDIR/table.md"

	echo
	[[ -n $COMPARE ]] && echo "### $(label_of "$i"): $IBIN" && echo
	echo "wrk -t$THREADS -c$CONNS -d$DURATION --latency, median of $ROUNDS interleaved rounds, started $START${OIDC_OPTS:+, OIDC_OPTS=\"$OIDC_OPTS\"}"
	echo "Caddy $("$IBIN" version | awk '{print $1}'), $(go version | awk '{print $3}'), $(nproc) CPUs, load average $LOAD_BEFORE before / $LOAD_AFTER after"
	echo
	cat "$IDIR/table.md"
	echo
	OTHER=$(cat "$IDIR"/results-*.txt | awk '{print $5}' | median)
	if awk -v o="$OTHER" -v m="$QUIET_MAX" 'BEGIN { exit !(o >= m) }'; then
		echo "WARNING: other processes used ${OTHER}% of the machine (median over the runs): these numbers are skewed"
		echo
	fi
	echo "per round: req/s (CPU µs/req of Caddy / upstream / wrk; CPU used by processes this run did not start, % of the machine):"
	for s in $SCENARIOS; do
		echo "  $s: $(awk '{printf "%.0f (%.0f/%.0f/%.0f; %.0f%%)  ", $1, $4, $6, $7, $5}' "$IDIR/results-$s.txt")"
	done
	echo "paired ratios (each run over the mean of the plain runs around it):"
	for s in $SCENARIOS; do
		[[ $s == plain ]] || echo "  $s: $(awk '{printf "%.2f ", $1}' "$IDIR/ratios-$s.txt")"
	done
done

# compared S: for every pair of back-to-back runs of S (one per binary),
# req/s of CADDY_BIN over req/s of COMPARE, as "median min max".
compared() {
	paste -d' ' "$WORK/0/results-$1.txt" "$WORK/1/results-$1.txt" | awk '{print $1 / $8}' >"$WORK/compare-ratios-$1.txt"
	echo "$(median <"$WORK/compare-ratios-$1.txt") $(sort -g "$WORK/compare-ratios-$1.txt" | head -1) $(sort -g "$WORK/compare-ratios-$1.txt" | tail -1)"
}
if [[ -n $COMPARE ]]; then
	echo
	echo "### $(label_of 0) / COMPARE (after / before): $(label_of 0)=${BINS[0]}, COMPARE=$COMPARE"
	echo
	echo "| scenario | req/s $(label_of 0) | req/s COMPARE | req/s ratio (back-to-back pairs, median) | min-max | Caddy CPU µs/req $(label_of 0) | COMPARE | CPU ratio |"
	echo "|---|---:|---:|---:|---:|---:|---:|---:|"
	for s in $SCENARIOS; do
		use_instance 0
		r0=$(col "$s" 1) c0=$(col "$s" 4)
		use_instance 1
		r1=$(col "$s" 1) c1=$(col "$s" 4)
		read -r cm cmin cmax <<<"$(compared "$s")"
		awk -v s="$s" -v r0="$r0" -v r1="$r1" -v c0="$c0" -v c1="$c1" -v cm="$cm" -v cmin="$cmin" -v cmax="$cmax" \
			'BEGIN { printf "| %s | %.0f | %.0f | %.3fx | %.2f-%.2f | %.0f | %.0f | %.2fx |\n", s, r0, r1, cm, cmin, cmax, c0, c1, (c1 > 0 ? c0 / c1 : 0) }'
	done
	echo
	echo "per pair: req/s ratio $(label_of 0) / COMPARE:"
	for s in $SCENARIOS; do
		echo "  $s: $(awk '{printf "%.3f ", $1}' "$WORK/compare-ratios-$s.txt")"
	done
fi

# ---- profile ------------------------------------------------------------

if [[ -n $PROFILE ]]; then
	mkdir -p "$ROOT/bench/out"
	wrk_for=$((PROFILE_SECONDS + 4))s
	for s in $PROFILE; do
	for i in $INSTANCES; do
		use_instance "$i"
		suffix=
		[[ $i == 1 ]] && suffix=.compare
			port_of "$s" >/dev/null
			say "profiling $s${COMPARE:+ ($(label_of "$i"))}: ${PROFILE_SECONDS}s CPU profile while wrk runs ($wrk_for)"
			run_wrk "$s" "$wrk_for" "$IDIR/wrk-profile-$s.txt" &
			WRK_PID=$!
			sleep 2
			prof="$ROOT/bench/out/cpu-$s$suffix.pprof"
			curl -sf -o "$prof" "http://$HOST:$P_ADMIN/debug/pprof/profile?seconds=$PROFILE_SECONDS" ||
				die "cannot fetch the profile from the admin endpoint"
			wait "$WRK_PID"
			res=$(parse "$IDIR/wrk-profile-$s.txt")
			read -r rps _ <<<"$res"
			echo
			echo "### CPU profile: $s${COMPARE:+, $(label_of "$i") $IBIN} ($rps req/s while profiling; $prof)"
			echo
			go tool pprof -top -nodecount=30 "$IBIN" "$prof" 2>/dev/null | sed -n '/flat%/,$p' | sed 's/^/    /'
			if [[ $s != plain* ]]; then
				echo
				echo "  the oidc handler's own CPU (samples under caddyoidc.(*OIDC).ServeHTTP, the next handlers left out):"
				echo
				go tool pprof -top -cum -nodecount=30 -focus='caddyoidc\.\(\*OIDC\)\.ServeHTTP' -ignore='reverseproxy' \
					"$IBIN" "$prof" 2>/dev/null | sed -n '/flat%/,$p' |
					grep -vE 'caddyhttp\.|net/http\.|runtime\.goexit|runtime\.systemstack|internal/runtime/maps' | sed 's/^/    /'
			fi
			go tool pprof -top -cum -nodecount=60 "$IBIN" "$prof" 2>/dev/null >"$ROOT/bench/out/cpu-$s$suffix.cum.txt"
			echo "    (cumulative view: bench/out/cpu-$s$suffix.cum.txt)"
	done
	done
fi
