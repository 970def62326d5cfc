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
	vars := id.vars()
	setHeader(r, headerUser, vars.headers[0])
	setHeader(r, headerEmail, vars.headers[1])
	setHeader(r, headerPreferredUsername, vars.headers[2])
	setHeader(r, headerGroups, vars.headers[3])
	for h, path := range o.ClaimHeaders {
		setHeader(r, h, headerValue(lookupClaim(id.Claims, []string{path})))
	}
	o.stripOwnCookies(r)

	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		// One provider per request instead of ~20 map inserts: it answers
		// http.auth.user.* from values computed once per identity. Values
		// Set by other handlers (vars http.auth.user.id ...) still win,
		// since Caddy asks its static map first.
		repl.Map(id.placeholder)
	}
}

// placeholderPrefix starts every placeholder this handler provides.
const placeholderPrefix = "http.auth.user."

// placeholder resolves {http.auth.user.*} for the identity (a
// caddy.ReplacerFunc).
func (id *identity) placeholder(key string) (any, bool) {
	name, ok := strings.CutPrefix(key, placeholderPrefix)
	if !ok {
		return nil, false
	}
	if name == "source" {
		return id.Source, true
	}
	v, ok := id.vars().placeholders[name]
	return v, ok
}

// identityVars are the header values and placeholders of an identity,
// computed once per identity (identities are shared by concurrent requests
// through the session and token caches).
type identityVars struct {
	headers [4]string // user, email, preferred username, groups
	// placeholders maps placeholder names after "http.auth.user." to their
	// values, free of control characters like the headers.
	placeholders map[string]string
}

// vars returns the identity's upstream values, computing them on first use.
func (id *identity) vars() *identityVars {
	if v := id.computed.Load(); v != nil {
		return v
	}
	roles := headerValue(strings.Join(id.Roles, ","))
	sub := headerValue(id.Subject)
	v := &identityVars{headers: [4]string{sub, headerValue(id.Email),
		headerValue(id.PreferredUsername), roles}}
	v.placeholders = make(map[string]string, 7+len(id.Claims))
	for k, c := range id.Claims {
		switch c.(type) {
		case string, bool, float64, []any:
			v.placeholders["claims."+k] = headerValue(c)
		}
	}
	v.placeholders["id"], v.placeholders["sub"] = sub, sub
	v.placeholders["iss"] = headerValue(id.Issuer)
	v.placeholders["email"] = v.headers[1]
	v.placeholders["name"] = headerValue(id.Name)
	v.placeholders["preferred_username"] = v.headers[2]
	v.placeholders["roles"] = roles
	id.computed.Store(v)
	return v
}

// setHeader sets a header value (already free of control characters), or
// removes the header for an empty value.
func setHeader(r *http.Request, name, value string) {
	if value == "" {
		r.Header.Del(name)
		return
	}
	r.Header.Set(name, value)
}
