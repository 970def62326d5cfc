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
	// headerProvider names the provider (Provider.Name), when it has one.
	headerProvider = "X-Auth-Request-Provider"
)

var identityHeaders = []string{headerUser, headerEmail, headerPreferredUsername, headerGroups, headerAccessToken, headerProvider}

// upstreamTokens are the tokens that may go upstream.
type upstreamTokens struct{ access, id string }

// headerSet matches header names the way a proxy or application may
// normalise them: ASCII case-insensitively, with '-', '_' and '.' alike
// (X-Auth-Request-User, X_AUTH_REQUEST_USER, x.auth.request.user; CGI, PHP
// and several frameworks turn all of them into one name).
type headerSet struct {
	names []string  // folded: lower case, '_' and '.' as '-'
	lens  [2]uint64 // bit n: some name has length n (n < 128)
	long  bool      // some name is 128 bytes or longer
}

// newHeaderSet is the set of the identity headers and the claim headers.
func newHeaderSet(claimHeaders map[string]string) *headerSet {
	hs := &headerSet{}
	add := func(h string) {
		f := foldHeader(h)
		if contains(hs.names, f) {
			return
		}
		hs.names = append(hs.names, f)
		if len(f) < 128 {
			hs.lens[len(f)/64] |= 1 << (len(f) % 64)
		} else {
			hs.long = true
		}
	}
	for _, h := range identityHeaders {
		add(h)
	}
	for h := range claimHeaders {
		add(h)
	}
	return hs
}

func foldHeader(h string) string {
	b := []byte(h)
	for i, c := range b {
		b[i] = foldByte(c)
	}
	return string(b)
}

func foldByte(c byte) byte {
	switch {
	case 'A' <= c && c <= 'Z':
		return c + 'a' - 'A'
	case c == '_' || c == '.':
		return '-'
	}
	return c
}

// has tells whether name is one of the set in any spelling. It allocates
// nothing, and most names are ruled out by their length alone.
func (hs *headerSet) has(name string) bool {
	if n := len(name); n < 128 {
		if hs.lens[n/64]&(1<<(n%64)) == 0 {
			return false
		}
	} else if !hs.long {
		return false
	}
next:
	for _, f := range hs.names {
		if len(f) != len(name) {
			continue
		}
		for i := 0; i < len(name); i++ {
			if foldByte(name[i]) != f[i] {
				continue next
			}
		}
		return true
	}
	return false
}

// removeIdentityHeaders deletes every request header that is, in any
// spelling, one this handler sets (identity headers, claim_header names),
// so a client cannot forge its identity, whatever the upstream normalises.
// It does not rely on the server dropping names with '_' or '.'.
func (o *OIDC) removeIdentityHeaders(r *http.Request) {
	hs := o.rt.identityHeaders
	if hs == nil {
		hs = newHeaderSet(o.ClaimHeaders)
	}
	for k := range r.Header {
		if hs.has(k) {
			delete(r.Header, k)
		}
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
	vars := id.vars(o.Name)
	setHeader(r, headerUser, vars.headers[0])
	setHeader(r, headerEmail, vars.headers[1])
	setHeader(r, headerPreferredUsername, vars.headers[2])
	setHeader(r, headerGroups, vars.headers[3])
	for h, path := range o.ClaimHeaders {
		setHeader(r, h, headerValue(lookupClaim(id.Claims, []string{path})))
	}
	if o.Name != "" {
		r.Header.Set(headerProvider, o.Name)
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
	v, ok := id.vars("").placeholders[name]
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

// vars returns the identity's upstream values, computing them on first use
// with the name of the provider whose identity it is (one provider handler
// creates and caches an identity: its provider is always the same).
func (id *identity) vars(provider string) *identityVars {
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
	if provider != "" {
		v.placeholders["provider"] = provider
	}
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
