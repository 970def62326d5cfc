package caddyoidc

import (
	"crypto/sha256"
	"encoding/hex"
	"net/url"
	"reflect"
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/certmagic"

	"github.com/caddy-oidc/caddy-oidc/internal/nsstore"
)

// A namespace is one trust domain: the site, the provider (issuer) and the
// client. Every storage key of a handler lives under its namespace
// (nsStorage) and every sealed value is bound to it (the sealers' key
// derivation names it), so a cookie, flow state, stored session, grant,
// device record, revocation or AZAT signing key of one namespace is never
// found, opened or trusted in another. Sites share a namespace only when
// configured to (the `namespace` option), and then only with the same
// provider and client.

// storageRoot is the prefix of the keys a handler gives its storage.
const storageRoot = nsstore.Prefix

// namespaceID derives the namespace of a handler. An explicit name (the
// `namespace` option) replaces the site, never the provider or the client:
// two handlers share a namespace only when they trust the same provider
// with the same client.
func namespaceID(site, issuer, clientID, explicit string) string {
	kind, name := "site", site
	if explicit != "" {
		kind, name = "name", explicit
	}
	h := sha256.Sum256([]byte("caddy-oidc namespace v1\x00" + kind + "\x00" + name + "\x00" + issuer + "\x00" + clientID))
	return hex.EncodeToString(h[:12])
}

// validNamespaceName accepts 1-64 letters, digits, '.', '_' or '-'.
func validNamespaceName(s string) bool {
	if len(s) == 0 || len(s) > 64 {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '.', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// siteAddress is the first address of the Caddyfile site block that holds
// the directive h parses: the site's identity in its namespace. The helper
// does not export its block, so it is read by reflection; a Caddy version
// that renames the field gives "" (the test TestCaddyfileSiteAddress
// fails then), and the namespace is then derived from the provider and
// client alone.
func siteAddress(h httpcaddyfile.Helper) string {
	v := reflect.ValueOf(h).FieldByName("parentBlock")
	if !v.IsValid() || v.Kind() != reflect.Struct {
		return ""
	}
	keys := v.FieldByName("Keys")
	if !keys.IsValid() || keys.Kind() != reflect.Slice || keys.Len() == 0 {
		return ""
	}
	k := keys.Index(0)
	if k.Kind() != reflect.Struct {
		return ""
	}
	t := k.FieldByName("Text")
	if !t.IsValid() || t.Kind() != reflect.String {
		return ""
	}
	return t.String()
}

// siteOrigin is the origin (scheme://host[:port]) named by a site address,
// or "" when the address names no host (":8080", "*"): the default issuer
// of AZATs, taken from configuration, never from a request's Host.
func siteOrigin(addr string) string {
	if addr == "" || strings.ContainsAny(addr, "*{") {
		return ""
	}
	a, err := httpcaddyfile.ParseAddress(addr)
	if err != nil || a.Host == "" {
		return ""
	}
	scheme := a.Scheme
	if scheme == "" {
		if a.Port == "80" {
			scheme = "http"
		} else {
			scheme = "https"
		}
	}
	host := a.Host
	if strings.Contains(host, ":") && !strings.HasPrefix(host, "[") {
		host = "[" + host + "]" // IPv6 literal
	}
	if a.Port != "" && !(scheme == "https" && a.Port == "443") && !(scheme == "http" && a.Port == "80") {
		host += ":" + a.Port
	}
	u := url.URL{Scheme: scheme, Host: host}
	return u.String()
}

// newNSStorage confines st to namespace id.
func newNSStorage(st certmagic.Storage, id string) certmagic.Storage { return nsstore.New(st, id) }
