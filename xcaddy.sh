#!/usr/bin/env bash
# xcaddy.sh: build Caddy with this project's modules, run the demo, run the
# tests. Needs only Go (xcaddy is a tool of go.mod: `go tool xcaddy`) and curl.
#
# usage: ./xcaddy.sh COMMAND [ARGS]
#
#   build [--with-redis] [--force]
#       Build ./caddy: Caddy v2.11.9 with http.handlers.oidc and the AZAT
#       modules of this checkout (2-3 minutes the first time). --with-redis
#       adds the Redis storage module (github.com/pberkel/caddy-storage-redis).
#       Skipped when ./caddy was built with the same modules (see .caddy-build)
#       and is newer than go.mod, go.sum and every non-test .go file it is
#       built from; --force rebuilds anyway.
#   demo
#       Build (with Redis: the binary `test` uses), then start a local OpenID
#       Provider on 127.0.0.1:9998, the demo app on 127.0.0.1:8081 and Caddy on
#       http://127.0.0.1:8080 (examples/demo/Caddyfile). Ctrl-C stops them all.
#   test [go test args]
#       Build ./caddy --with-redis, then `go test -count=1 -timeout 40m ./...`
#       (or the given args) with CADDY_BIN=$PWD/caddy. With CI=true the browser
#       tests fail instead of skipping when Chromium is missing.
#   help
#       This text.
set -euo pipefail
cd "$(dirname "$0")"

CADDY_VERSION=v2.11.9
MODULE=github.com/caddy-oidc/caddy-oidc
REDIS_MODULE=github.com/pberkel/caddy-storage-redis@v1.8.1
STAMP=.caddy-build

usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//'; }

die() {
	echo "xcaddy.sh: $*" >&2
	exit 1
}

# newer_sources prints the first source file newer than ./caddy, if any:
# go.mod, go.sum and the non-test .go files outside examples/ and e2e/ (the
# only ones the binary is built from).
newer_sources() {
	find . \( -path ./.git -o -path ./examples -o -path ./e2e -o -path ./tmp \) -prune -o \
		\( -name '*.go' -not -name '*_test.go' -o -name go.mod -o -name go.sum \) \
		-newer ./caddy -print | head -1
}

build() {
	local redis=no force=no
	for a in "$@"; do
		case "$a" in
		--with-redis) redis=yes ;;
		--force) force=yes ;;
		*) die "build: unknown option $a (see ./xcaddy.sh help)" ;;
		esac
	done
	command -v go >/dev/null || die "Go is needed: https://go.dev/dl/"
	local want="caddy=$CADDY_VERSION redis=$redis"
	if [[ $force == no && -x ./caddy && -f $STAMP && "$(cat "$STAMP")" == "$want" &&
		-z "$(newer_sources)" ]]; then
		echo "./caddy is up to date ($want); --force rebuilds it"
		return
	fi
	local with=(--with "$MODULE@v0.0.0-00010101000000-000000000000=.")
	if [[ $redis == yes ]]; then
		with+=(--with "$REDIS_MODULE")
	fi
	echo "building ./caddy ($want); 2-3 minutes the first time"
	rm -f "$STAMP"
	local start=$SECONDS
	go tool xcaddy build "$CADDY_VERSION" --output ./caddy "${with[@]}"
	echo "$want" >"$STAMP"
	echo "built ./caddy in $((SECONDS - start))s; its modules:"
	./caddy list-modules | grep -E '^(http\.handlers\.oidc|caddy\.storage\.redis)' | sed 's/^/  /' || true
}

# ---- demo -------------------------------------------------------------------

DEMO_DIR=""

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_up URL PID NAME LOG: until URL answers (any HTTP status) or PID dies.
wait_up() {
	local url=$1 pid=$2 name=$3 log=$4
	for _ in $(seq 1 300); do
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "$name exited at start-up; the end of $log:" >&2
			tail -n 30 "$log" >&2
			exit 1
		fi
		if curl -s -o /dev/null --max-time 2 "$url"; then
			return 0
		fi
		sleep 0.2
	done
	echo "$name did not answer on $url within 60s; the end of $log:" >&2
	tail -n 30 "$log" >&2
	exit 1
}

demo_cleanup() {
	local pids
	pids=$(jobs -pr)
	if [[ -n $pids ]]; then
		echo
		echo "stopping the demo"
		# shellcheck disable=SC2086
		kill $pids 2>/dev/null || true
		for _ in $(seq 1 50); do # Caddy shuts down gracefully; 5s at most
			[[ -z $(jobs -pr) ]] && break
			sleep 0.1
		done
		pids=$(jobs -pr)
		# shellcheck disable=SC2086
		[[ -z $pids ]] || kill -9 $pids 2>/dev/null || true
		wait 2>/dev/null || true
	fi
	if [[ -n $DEMO_DIR ]]; then
		rm -rf "$DEMO_DIR"
	fi
}

demo() {
	[[ $# -eq 0 ]] || die "demo takes no arguments"
	command -v curl >/dev/null || die "the demo needs curl"
	local p
	for p in 9998 8081 8080 2019; do
		if port_busy "$p"; then
			die "127.0.0.1:$p is already in use (another demo still running?)"
		fi
	done
	build --with-redis

	DEMO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/caddy-oidc-demo.XXXXXX")
	trap demo_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP

	echo "building the demo OpenID Provider and app"
	go build -o "$DEMO_DIR/demo-op" ./examples/demo/op
	go build -o "$DEMO_DIR/demo-upstream" ./examples/demo/upstream
	export DEMO_CLIENT_SECRET=demo-secret

	"$DEMO_DIR/demo-op" -addr 127.0.0.1:9998 >"$DEMO_DIR/op.log" 2>&1 &
	local op=$!
	wait_up http://127.0.0.1:9998/.well-known/openid-configuration "$op" "the OpenID Provider" "$DEMO_DIR/op.log"

	"$DEMO_DIR/demo-upstream" -addr 127.0.0.1:8081 >"$DEMO_DIR/upstream.log" 2>&1 &
	local up=$!
	wait_up http://127.0.0.1:8081/api/whoami "$up" "the demo app" "$DEMO_DIR/upstream.log"

	# Caddy's storage (cookie secret, AZAT keys) and autosaved config go to
	# the demo's temp dir, not to ~/.local/share/caddy.
	XDG_DATA_HOME="$DEMO_DIR/data" XDG_CONFIG_HOME="$DEMO_DIR/config" \
		./caddy run --config examples/demo/Caddyfile --adapter caddyfile >"$DEMO_DIR/caddy.log" 2>&1 &
	local caddy=$!
	wait_up http://127.0.0.1:8080/ "$caddy" "Caddy" "$DEMO_DIR/caddy.log"

	# The user and password, as the OP prints them.
	local login=""
	for _ in $(seq 1 25); do
		login=$(sed -n 's/.*log in with *username: *\([^ ]*\) *password: *\([^ ]*\).*/\1 \/ \2/p' "$DEMO_DIR/op.log" | head -1)
		[[ -n $login ]] && break
		sleep 0.2
	done
	[[ -n $login ]] || login="(see the OpenID Provider's banner in $DEMO_DIR/op.log)"

	cat <<TXT

  ================================================================
   caddy-oidc demo is running

   open      http://127.0.0.1:8080
   log in    $login

   http://127.0.0.1:8080/auth/userinfo   who Caddy thinks you are
   http://127.0.0.1:8080/api/whoami      what the app received (JSON)

   OpenID Provider  http://127.0.0.1:9998  (client demo / demo-secret)
   demo app         http://127.0.0.1:8081  (behind Caddy)
   config           examples/demo/Caddyfile
   logs             $DEMO_DIR/{caddy,op,upstream}.log

   Ctrl-C stops everything.
  ================================================================

TXT
	# Until Ctrl-C, or until one of the three exits by itself.
	local rc=0
	wait -n "$op" "$up" "$caddy" || rc=$?
	local name log
	for name in op upstream caddy; do
		case $name in op) p=$op ;; upstream) p=$up ;; caddy) p=$caddy ;; esac
		if ! kill -0 "$p" 2>/dev/null; then
			log="$DEMO_DIR/$name.log"
			echo "$name exited (status $rc); the end of its log:" >&2
			tail -n 30 "$log" >&2
		fi
	done
	exit 1
}

# ---- test -------------------------------------------------------------------

# install_test_tools installs Debian's chromium, redis-server and curl when
# missing and apt-get is usable (root), so `./xcaddy.sh test` works on a fresh
# machine; otherwise it says what to install.
install_test_tools() {
	local need=()
	command -v chromium >/dev/null || need+=(chromium)
	command -v redis-server >/dev/null || need+=(redis-server)
	command -v curl >/dev/null || need+=(curl)
	((${#need[@]})) || return 0
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		echo "installing ${need[*]} (apt-get)"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
	else
		echo "the tests need: ${need[*]} (Debian: sudo apt-get install -y ${need[*]})" >&2
	fi
}

run_tests() {
	install_test_tools
	build --with-redis
	export CADDY_BIN="$PWD/caddy"
	if [[ "${CI:-}" == "true" ]]; then
		export CADDY_OIDC_REQUIRE_BROWSER=1
	fi
	if [[ $# -eq 0 ]]; then
		set -- ./...
	fi
	echo "go test -count=1 -timeout 40m $*"
	go test -count=1 -timeout 40m "$@"
}

cmd=${1:-help}
[[ $# -eq 0 ]] || shift
case "$cmd" in
build) build "$@" ;;
demo) demo "$@" ;;
test) run_tests "$@" ;;
help | -h | --help) usage ;;
*)
	usage >&2
	exit 2
	;;
esac
