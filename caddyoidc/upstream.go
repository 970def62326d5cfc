package caddyoidc

import (
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
)

// Identity headers sent upstream; copies sent by the client are removed.
const (
	headerUser              = "X-Auth-Request-User"
	headerEmail             = "X-Auth-Request-Email"
	headerPreferredUsername = "X-Auth-Request-Preferred-Username"
	headerGroups            = "X-Auth-Request-Groups"
	headerAccessToken       = "X-Auth-Request-Access-Token"
)

var identityHeaders = []string{headerUser, headerEmail, headerPreferredUsername, headerGroups, headerAccessToken}

// upstreamTokens are the tokens that may go upstream.
type upstreamTokens struct{ access, id string }

// removeIdentityHeaders deletes every header this handler may set, so a
// client cannot forge its identity.
func removeIdentityHeaders(r *http.Request, claimHeaders map[string]string) {
	for _, h := range identityHeaders {
		r.Header.Del(h)
	}
	for h := range claimHeaders {
		r.Header.Del(h)
	}
}

// injectUpstream sets the upstream token, identity headers and placeholders.
func (o *OIDC) injectUpstream(r *http.Request, id *identity, tok upstreamTokens) {
	switch o.PassToken {
	case "access":
		r.Header.Set("Authorization", "Bearer "+tok.access)
	case "id":
		if tok.id != "" {
			r.Header.Set("Authorization", "Bearer "+tok.id)
		} else {
			r.Header.Del("Authorization")
		}
	default:
		r.Header.Del("Authorization")
	}
	setHeader(r, headerUser, id.Subject)
	setHeader(r, headerEmail, id.Email)
	setHeader(r, headerPreferredUsername, id.PreferredUsername)
	setHeader(r, headerGroups, strings.Join(id.Roles, ","))
	for h, path := range o.ClaimHeaders {
		setHeader(r, h, headerValue(lookupClaim(id.Claims, []string{path})))
	}
	o.stripOwnCookies(r)

	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Set("http.auth.user.id", id.Subject)
		repl.Set("http.auth.user.sub", id.Subject)
		repl.Set("http.auth.user.iss", id.Issuer)
		repl.Set("http.auth.user.email", id.Email)
		repl.Set("http.auth.user.name", id.Name)
		repl.Set("http.auth.user.preferred_username", id.PreferredUsername)
		repl.Set("http.auth.user.roles", strings.Join(id.Roles, ","))
		repl.Set("http.auth.user.source", id.Source)
		for k, v := range id.Claims {
			switch v.(type) {
			case string, bool, float64, []any:
				repl.Set("http.auth.user.claims."+k, headerValue(v))
			}
		}
	}
}

func setHeader(r *http.Request, name, value string) {
	value = headerValue(value)
	if value == "" {
		r.Header.Del(name)
		return
	}
	r.Header.Set(name, value)
}
