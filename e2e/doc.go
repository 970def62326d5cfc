// Package e2e holds end-to-end tests of the real Caddy binary built with
// this project's modules (./xcaddy.sh build; the tests use $CADDY_BIN or
// build one themselves), against the real test OpenID Provider, real curl and
// a real Redis.
package e2e
