#!/usr/bin/env bash
# Builds Caddy with this project's modules, runs the demo, runs the tests.
#
#   ./xcaddy.sh build [--with-redis] [--force]   ./caddy with the oidc/azat modules
#   ./xcaddy.sh demo                             Caddy + a local OpenID Provider + an upstream
#   ./xcaddy.sh test                             build, then every test
#   ./xcaddy.sh help
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION=v2.11.9
MODULE=github.com/caddy-oidc/caddy-oidc
REDIS_MODULE=github.com/pberkel/caddy-storage-redis@v1.8.1
STAMP=.caddy-build

usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; }

# build [--with-redis] [--force]: skips the 2-3 minute build when ./caddy is
# newer than every source file and was built with the same modules.
build() {
	local redis=no force=no
	for a in "$@"; do
		case "$a" in
		--with-redis) redis=yes ;;
		--force) force=yes ;;
		*) echo "unknown build option $a" >&2; exit 2 ;;
		esac
	done
	local want="caddy=$CADDY_VERSION redis=$redis"
	if [[ $force == no && -x ./caddy && -f $STAMP && "$(cat $STAMP)" == "$want" ]] &&
		[[ -z "$(find . -name '*.go' -newer ./caddy -not -path './.git/*' | head -1)" ]] &&
		[[ go.mod -ot ./caddy && go.sum -ot ./caddy ]]; then
		echo "./caddy is up to date ($want)"
		return
	fi
	local with=(--with "$MODULE@v0.0.0-00010101000000-000000000000=.")
	[[ $redis == yes ]] && with+=(--with "$REDIS_MODULE")
	echo "building ./caddy ($want); this takes 2-3 minutes the first time"
	go tool xcaddy build "$CADDY_VERSION" --output ./caddy "${with[@]}"
	echo "$want" >$STAMP
	./caddy list-modules | grep -E 'http.handlers.oidc|storage.redis' || true
}

wait_http() { # url name
	for _ in $(seq 1 150); do
		curl -s -o /dev/null "$1" && return 0
		sleep 0.2
	done
	echo "$2 did not start on $1" >&2
	return 1
}

demo() {
	build --with-redis # the same binary as the tests: no rebuild between them
	local dir
	dir=$(mktemp -d)
	trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT INT TERM
	go build -o "$dir/demo-op" ./examples/demo/op
	go build -o "$dir/demo-upstream" ./examples/demo/upstream
	export DEMO_CLIENT_SECRET=demo-secret
	"$dir/demo-op" -addr 127.0.0.1:9998 >"$dir/op.log" 2>&1 &
	wait_http http://127.0.0.1:9998/.well-known/openid-configuration "the OpenID Provider"
	"$dir/demo-upstream" -addr 127.0.0.1:8081 >"$dir/upstream.log" 2>&1 &
	wait_http http://127.0.0.1:8081/ "the upstream"
	XDG_DATA_HOME="$dir" XDG_CONFIG_HOME="$dir" ./caddy run --config examples/demo/Caddyfile --adapter caddyfile >"$dir/caddy.log" 2>&1 &
	wait_http http://127.0.0.1:8080/ "Caddy"
	cat <<TXT

  Demo running:
    open  http://127.0.0.1:8080        (Caddy with the oidc handler)
    login test-user@localhost / verysecure   (or test-user2 / verysecure)
    OpenID Provider  http://127.0.0.1:9998   upstream app http://127.0.0.1:8081
    logs in $dir (caddy.log, op.log, upstream.log)
  Ctrl-C stops everything.

TXT
	wait
}

run_tests() {
	build --with-redis
	export CADDY_BIN="$PWD/caddy"
	if [[ "${CI:-}" == "true" ]]; then
		export CADDY_OIDC_REQUIRE_BROWSER=1
	fi
	go test -count=1 -timeout 40m ./...
}

case "${1:-help}" in
build) shift; build "$@" ;;
demo) demo ;;
test) run_tests ;;
help | -h | --help) usage ;;
*) usage; exit 2 ;;
esac
