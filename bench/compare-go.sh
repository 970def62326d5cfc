#!/usr/bin/env bash
# bench/compare-go.sh REV: the hot-path Go benchmarks of the tree at REV and
# of the working tree, ROUNDS times alternately (REV first), for a
# before/after table (medians over the rounds are printed at the end).
#
#   bench/compare-go.sh 630e9ee          ROUNDS=5 BENCHTIME=1s by default
#
# Test binaries are built once (go test -c) from a temporary worktree of REV
# and from this tree, so no compilation runs between measurements.
set -euo pipefail
REV=${1:?usage: bench/compare-go.sh REV}
ROUNDS=${ROUNDS:-5}
BENCHTIME=${BENCHTIME:-1s}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/caddy-oidc-gobench.XXXXXX")
trap 'git -C "$ROOT" worktree remove --force "$WORK/before" >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT
git -C "$ROOT" worktree add -q --detach "$WORK/before" "$REV"
B='^Benchmark(SessionLoadWarm|SessionDecodeCold|BearerVerifyWarm|BearerVerifyCold|ServeHTTPFloor|ServeHTTPCookie|ServeHTTPBearer|ServeHTTPAZAT|ServeHTTP3ProvidersCookie|ServeHTTP3ProvidersBearer|ServeHTTP3ProvidersAZAT|RevocationCheck)$'
A='^Benchmark(ServiceVerifyWarm|VerifyCold)$'
for t in before after; do
	src="$ROOT"
	[ "$t" = before ] && src="$WORK/before"
	(cd "$src" && go test -c -o "$WORK/$t-caddyoidc.test" ./caddyoidc && go test -c -o "$WORK/$t-azatauth.test" ./azatauth)
done
run() { # tree package pattern
	local dir="$ROOT/$2"
	[ "$1" = before ] && dir="$WORK/before/$2"
	(cd "$dir" && "$WORK/$1-$2.test" -test.run '^$' -test.bench "$3" -test.benchmem -test.benchtime "$BENCHTIME") |
		grep '^Benchmark' | sed "s/^/$1 /"
}
for i in $(seq "$ROUNDS"); do
	echo "round $i/$ROUNDS" >&2
	for t in before after; do
		run "$t" caddyoidc "$B"
		run "$t" azatauth "$A"
	done
done | tee "$WORK/out.txt"
echo
echo "| benchmark | before ns/op | before B, allocs | after ns/op | after B, allocs | after/before |"
echo "|---|---:|---:|---:|---:|---:|"
awk '{ name=$2; sub(/-[0-9]+$/, "", name); ns[$1" "name]=ns[$1" "name]" "$4; seen[name]=1
		for (i=5; i<=NF; i++) { if ($i=="B/op") b=$(i-1); if ($i=="allocs/op") al=$(i-1) }; ba[$1" "name]=b", "al }
	function median(s,   a, n, i, j, t) { n=split(s, a, " "); for(i=1;i<=n;i++) for(j=i+1;j<=n;j++) if (a[j]+0<a[i]+0) {t=a[i];a[i]=a[j];a[j]=t}; return a[int((n+1)/2)] }
	END { for (k in seen) { b=median(ns["before "k]); a=median(ns["after "k]); printf "| %s | %s | %s | %s | %s | %.2fx |\n", k, b, ba["before "k], a, ba["after "k], a/b } }' "$WORK/out.txt" | sort
