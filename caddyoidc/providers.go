package caddyoidc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// A site with several providers (`provider <name> { ... }` blocks, the
// Providers field) is served by one provider handler per provider: an *OIDC
// configured with the site's options and the provider's own, provisioned in
// the provider's namespace (its sessions, grants, device codes, AZAT keys
// and cookie sealer are its own), with its own cookie names
// (`<cookie_name>-<name>`), callback path (`<routes>/callback/<name>`) and
// back-channel logout path (`<routes>/backchannel-logout/<name>`). The
// site's handler only chooses the provider handler of each request, once:
//
//   - a route naming a provider (callback, back-channel logout, `?provider=`)
//     goes to that provider, and nowhere else;
//   - a bearer token goes to the one provider whose issuer (or AZAT
//     issuer) is its `iss`, or whose verified-token cache holds it; an
//     opaque token to the one provider that introspects; any other token is
//     refused with 401 without a call to any provider;
//   - a session cookie goes to the provider whose cookie it is;
//   - anything else to the default provider (unauthenticated navigations
//     are sent to `<routes>/login`, which shows the chooser page).
//
// A provider handler checks everything itself (a token routed by an
// unverified iss is verified by that provider's keys and rules only), so
// routing decides which checks apply, never whether they do.

// providerSet is the dispatch table of a site with several providers.
type providerSet struct {
	list   []*OIDC // in configuration order
	byName map[string]*OIDC
	// byIssuer maps each provider's issuer and AZAT issuer to the providers
	// that have it (several clients of one provider share an issuer).
	byIssuer map[string][]*OIDC
	// interactive are the providers that offer login (not bearer_only).
	interactive []*OIDC
	// def is the default provider (default_provider, else the only
	// interactive one), nil when the chooser page asks.
	def *OIDC
	// fallback handles requests without a credential of any provider.
	fallback *OIDC
	// opaque is the provider that checks opaque (non-JWT) bearer tokens
	// (introspection or tokeninfo), or nil.
	opaque *OIDC
	// azat are the providers' AZAT services, whose keys are published
	// together at jwksPath.
	azat     []*azatauth.Service
	jwksPath string
}

// maxProviders bounds the providers of a site (a bit mask per request
// tells which providers' cookies it holds).
const maxProviders = 64

// validProviderName tells whether name can name a provider: it appears in
// paths, cookie names and log lines.
func validProviderName(name string) bool {
	if len(name) == 0 || len(name) > 32 || name[0] == '-' {
		return false
	}
	for _, c := range []byte(name) {
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// validateProviders checks a configuration with several providers.
func (o *OIDC) validateProviders() error {
	if !reflect.ValueOf(o.Provider).IsZero() {
		return errors.New("oidc: with provider blocks, the provider options (issuer, client_id, audience, rules, ...) go in each provider's block, not at the top level")
	}
	seen := map[string]bool{}
	interactive := 0
	opaque := ""
	for _, p := range o.Providers {
		if p == nil {
			return errors.New("oidc: empty provider")
		}
		if !validProviderName(p.Name) {
			return fmt.Errorf("oidc: provider name %q must be 1 to 32 lowercase letters, digits or '-'", p.Name)
		}
		if len(seen) == maxProviders {
			return fmt.Errorf("oidc: at most %d providers per site", maxProviders)
		}
		if seen[p.Name] {
			return fmt.Errorf("oidc: provider %q is configured twice", p.Name)
		}
		seen[p.Name] = true
		if !p.BearerOnly {
			interactive++
		}
		if p.Introspection || p.TokeninfoEndpoint != "" {
			if opaque != "" {
				// An opaque token says nothing of its issuer: it would be
				// sent to every such provider, one provider's token to
				// another's endpoint.
				return fmt.Errorf("oidc: providers %q and %q both check opaque tokens (introspection or tokeninfo); at most one provider may", opaque, p.Name)
			}
			opaque = p.Name
		}
	}
	if o.DefaultProvider != "" {
		p := o.providerConfig(o.DefaultProvider)
		if p == nil {
			return fmt.Errorf("oidc: default_provider %q is not a configured provider", o.DefaultProvider)
		}
		if p.BearerOnly {
			return fmt.Errorf("oidc: default_provider %q is bearer_only: it offers no login", o.DefaultProvider)
		}
	}
	if o.providers != nil {
		pairs := map[[2]string]string{}
		for _, c := range o.providers.list {
			if err := c.Validate(); err != nil {
				return fmt.Errorf("provider %s: %v", c.Name, err)
			}
			k := [2]string{c.rt.issuer, c.rt.clientID}
			if other, dup := pairs[k]; dup {
				return fmt.Errorf("oidc: providers %q and %q have the same issuer and client_id: they would share a namespace", other, c.Name)
			}
			pairs[k] = c.Name
		}
	}
	return nil
}

// providerConfig is the configured provider named name, or nil.
func (o *OIDC) providerConfig(name string) *Provider {
	for _, p := range o.Providers {
		if p != nil && p.Name == name {
			return p
		}
	}
	return nil
}

// provisionProviders provisions one provider handler per configured
// provider and the dispatch table.
func (o *OIDC) provisionProviders(ctx context.Context, logger *zap.Logger, st certmagic.Storage) error {
	o.logger = logger
	if err := o.validateProviders(); err != nil {
		return err
	}
	if o.Routes == "" {
		o.Routes = defaultRoutes
	}
	o.Routes = "/" + strings.Trim(o.Routes, "/")
	base := o.CookieName
	if base == "" {
		base = defaultCookieName
	}
	ps := &providerSet{byName: map[string]*OIDC{}, byIssuer: map[string][]*OIDC{}}
	o.providers = ps
	claimHeaders := map[string]string{}
	for _, p := range o.Providers {
		c := new(OIDC)
		*c = *o
		c.Provider = *p
		c.Providers, c.DefaultProvider, c.providers = nil, "", nil
		c.CookieName = base + "-" + p.Name
		c.member = true
		if o.AZAT != nil {
			a := *o.AZAT
			c.AZAT = &a
		}
		if err := c.provision(ctx, logger.With(zap.String("provider", p.Name)), st); err != nil {
			_ = o.Cleanup()
			return fmt.Errorf("oidc: provider %s: %v", p.Name, err)
		}
		ps.list = append(ps.list, c)
		ps.byName[p.Name] = c
		ps.byIssuer[c.rt.issuer] = append(ps.byIssuer[c.rt.issuer], c)
		if c.azat != nil {
			iss := c.azat.Issuer("")
			ps.byIssuer[iss] = append(ps.byIssuer[iss], c)
			ps.azat = append(ps.azat, c.azat)
			ps.jwksPath = c.azat.JWKSPath()
		}
		if !p.BearerOnly {
			ps.interactive = append(ps.interactive, c)
		}
		if p.Introspection || p.TokeninfoEndpoint != "" {
			ps.opaque = c
		}
		for h, path := range p.ClaimHeaders {
			claimHeaders[h] = path
		}
	}
	ps.def = ps.byName[o.DefaultProvider]
	if ps.def == nil && len(ps.interactive) == 1 {
		ps.def = ps.interactive[0]
	}
	ps.fallback = ps.def
	if ps.fallback == nil && len(ps.interactive) > 0 {
		ps.fallback = ps.interactive[0]
	}
	if ps.fallback == nil {
		ps.fallback = ps.list[0]
	}
	// A client must not forge, through a provider that does not set it,
	// a claim header another provider sets: every provider handler removes
	// every provider's identity headers.
	hs := newHeaderSet(claimHeaders)
	for _, c := range ps.list {
		c.rt.identityHeaders = hs
		for _, s := range ps.list {
			if s != c {
				c.rt.siblings = append(c.rt.siblings, s)
			}
		}
	}
	return nil
}

// dropSession ends, at a login at another provider of the site, the
// session the request holds at this one (its stored record is deleted, its
// cookies expired): a browser has one session per site.
func (o *OIDC) dropSession(w http.ResponseWriter, r *http.Request) {
	if _, _, _, present := scanChunks(r, o.cookieOpts(r), nil); !present {
		return
	}
	s, _ := o.loadSession(r)
	o.clearSession(w, r, s)
}

// stripSiblingCookies removes the other providers' cookies from the
// upstream request. Cookie names are compared first (not the long values),
// so a request without them costs one pass over the names.
func (o *OIDC) stripSiblingCookies(r *http.Request) {
	if len(o.rt.siblings) == 0 {
		return
	}
	var present uint64 // bit i: siblings[i] has a cookie here
	cookiePairs(r, func(name, _ string) bool {
		n := strings.TrimPrefix(name, hostPrefix)
		for i, s := range o.rt.siblings {
			if strings.HasPrefix(n, s.rt.cookieMarker) {
				present |= 1 << i
			}
		}
		return true
	})
	for i, s := range o.rt.siblings {
		if present&(1<<i) != 0 {
			stripCookies(r, s.cookieOpts(r))
		}
	}
}

// serveHTTP chooses the provider handler of the request (see above).
func (ps *providerSet) serveHTTP(o *OIDC, w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if route, ok := strings.CutPrefix(r.URL.Path, o.Routes+"/"); ok {
		return ps.serveRoute(o, w, r, route, next)
	}
	if ps.jwksPath != "" && r.URL.Path == ps.jwksPath {
		azatauth.ServeJWKS(w, r, ps.azat...)
		return nil
	}
	if tok, ok := bearerToken(r); ok {
		var h [32]byte
		if len(tok) <= maxTokenSize {
			h = tokenHash(tok)
		}
		c := ps.forBearer(tok, h)
		if c == nil {
			// No provider's token: refused without a call to any of them.
			count(ps.fallback.rt.m.verifications, "bearer", "invalid")
			o.logger.Info("bearer token rejected: no provider has its issuer",
				zap.String("iss", idp.Printable(azatauth.PeekIssuer(tok), 100)), zap.String("remote", r.RemoteAddr))
			o.writeError(w, r, http.StatusUnauthorized, "invalid_token", "the access token is invalid")
			return nil
		}
		return c.serveAuthenticated(w, r, next, &h)
	}
	c, ambiguous := ps.forSession(r)
	if ambiguous {
		return ps.serveNoSession(w, r, next)
	}
	if c != nil {
		return c.serveAuthenticated(w, r, next, nil)
	}
	return ps.fallback.serveAuthenticated(w, r, next, nil)
}

// serveNoSession answers a request whose cookies open no session (several
// providers' sessions): unauthenticated, as without cookies. As for a
// request whose chunks of one provider open none, every provider's chunks
// it carries are expired (under every Domain and Path it could hold them):
// a chunk tossed in under a Path only this page matches is never sent to
// the callback, so no login would remove it and the page would stay
// without a session for good.
func (ps *providerSet) serveNoSession(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	f := ps.fallback
	f.logger.Warn("session cookies of several providers: none is used; they are expired", zap.String("remote", r.RemoteAddr))
	for _, c := range ps.interactive {
		c.expireDeadChunks(w, r)
	}
	f.removeIdentityHeaders(r)
	count(f.rt.m.verifications, "session", "invalid")
	return f.serveAnonymous(w, r, next)
}

// forBearer is the provider handler of a bearer token: the one whose
// verified-token cache holds it, else the one whose issuer (provider or
// AZAT) is its unverified iss (with several, the one whose audience its aud
// names), else, for an opaque token, the introspecting provider. nil: none.
func (ps *providerSet) forBearer(tok string, h [32]byte) *OIDC {
	now := time.Now()
	for _, c := range ps.list {
		if _, ok := c.rt.introspected.Get(h, now); ok {
			return c
		}
		if c.azat != nil && c.azat.Holds(h) {
			return c
		}
	}
	if strings.Count(tok, ".") != 2 {
		return ps.opaque
	}
	cs := ps.byIssuer[azatauth.PeekIssuer(tok)]
	switch len(cs) {
	case 0:
		return nil
	case 1:
		return cs[0]
	}
	aud := idp.UnverifiedClaims(tok)["aud"]
	for _, c := range cs {
		if idp.AudienceMatches(aud, c.rt.audience) {
			return c
		}
	}
	return cs[0]
}

// forSession is the provider handler whose session cookies (chunks, in the
// spelling in use: a bare name beside __Host- ones is not read) the request
// carries, or nil. ambiguous is true when it carries chunks of two
// providers: one may have been tossed in (a sibling subdomain, plain HTTP)
// beside the user's, and neither may choose the session, as with duplicate
// chunks of one provider. Only cookie names are compared, not the (long)
// values; the handler then reads and checks its chunks itself.
func (ps *providerSet) forSession(r *http.Request) (found *OIDC, ambiguous bool) {
	if len(r.Header["Cookie"]) == 0 {
		return nil, false
	}
	cookiePairs(r, func(name, _ string) bool {
		n := strings.TrimPrefix(name, hostPrefix)
		for _, c := range ps.interactive {
			if !strings.HasPrefix(n, c.rt.cookieMarker) {
				continue
			}
			if k, _, active := c.cookieOpts(r).classify(name); k == chunkCookie && active {
				if found != nil && found != c {
					ambiguous = true
					return false
				}
				found = c
			}
		}
		return true
	})
	if ambiguous {
		return nil, true
	}
	return found, false
}

// siblingChunks tells whether the request carries session chunks of
// another provider of the site.
func (o *OIDC) siblingChunks(r *http.Request) bool {
	for _, s := range o.rt.siblings {
		if _, _, _, present := scanChunks(r, s.cookieOpts(r), nil); present {
			return true
		}
	}
	return false
}

// hasSession tells whether the request carries a session chunk of this
// handler in the spelling in use.
func (o *OIDC) hasSession(r *http.Request) bool {
	opts := o.cookieOpts(r)
	found := false
	cookiePairs(r, func(name, _ string) bool {
		if k, _, active := opts.classify(name); k == chunkCookie && active {
			found = true
			return false
		}
		return true
	})
	return found
}

// endHere ends, at a logout served by another provider of the site, every
// session this provider's cookies in the request open (everywhere, as
// serveLogout does; the browser is sent to one provider's logout only).
func (o *OIDC) endHere(w http.ResponseWriter, r *http.Request) error {
	p := o.rt.disc.Get(r.Context())
	if p == nil {
		return errIdPUnavailable
	}
	sessions, err := o.logoutSessions(r)
	if err != nil && !errors.Is(err, errTooManyCookies) {
		return err
	}
	for _, s := range sessions {
		if err := o.endSession(r.Context(), p, s); err != nil {
			return err
		}
	}
	o.clearSession(w, r, nil)
	if len(sessions) > 0 {
		o.logger.Info("logout (with the site's logout at another provider)", zap.Int("sessions", len(sessions)))
	}
	return nil
}

// forRoute is the provider handler of a route that is not bound to one:
// the one named by `?provider=`, else that of the request's bearer token or
// session, else the default.
func (ps *providerSet) forRoute(r *http.Request) (*OIDC, bool) {
	if name := r.URL.Query().Get("provider"); name != "" {
		c, ok := ps.byName[name]
		return c, ok
	}
	if tok, ok := bearerToken(r); ok {
		var h [32]byte
		if len(tok) <= maxTokenSize {
			h = tokenHash(tok)
		}
		c := ps.forBearer(tok, h)
		return c, c != nil
	}
	if c, _ := ps.forSession(r); c != nil {
		return c, true
	}
	return ps.fallback, true
}

// serveRoute dispatches <routes>/<route> to a provider handler.
func (ps *providerSet) serveRoute(o *OIDC, w http.ResponseWriter, r *http.Request, route string, next caddyhttp.Handler) error {
	var c *OIDC
	switch {
	case route == "login":
		name := r.URL.Query().Get("provider")
		if name == "" && ps.def == nil {
			ps.serveChooser(o, w, r)
			return nil
		}
		c = ps.def
		if name != "" {
			c = ps.byName[name]
		}
		if c == nil || c.BearerOnly {
			o.writeError(w, r, http.StatusBadRequest, "invalid_request", "no such provider to log in with")
			return nil
		}
	case route == "logged-out":
		serveLoggedOut(w, r, o.Routes+"/login")
		return nil
	case strings.HasPrefix(route, "callback/"), strings.HasPrefix(route, "backchannel-logout/"):
		// Bound to one provider: its flow cookie, state and keys only.
		var name string
		route, name, _ = strings.Cut(route, "/")
		c = ps.byName[name]
	case route == "callback", route == "backchannel-logout":
		c = nil // must name the provider
	default:
		var ok bool
		if c, ok = ps.forRoute(r); !ok {
			c = nil
		}
	}
	if c == nil {
		o.writeError(w, r, http.StatusNotFound, "not_found", "no such provider")
		return nil
	}
	if route == "logout" && r.Method == http.MethodPost && sameOrigin(r) {
		// One logout ends the browser's sessions at every provider (one
		// may have been tossed in beside the user's).
		for _, s := range ps.interactive {
			if s != c && s.hasSession(r) {
				if err := s.endHere(w, r); err != nil {
					s.logger.Error("logout: ending the session failed", errField(err))
					o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the logout could not be recorded; retry")
					return nil
				}
			}
		}
	}
	return c.serveRoute(w, r, route, next)
}
