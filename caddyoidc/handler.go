package caddyoidc

import (
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// ServeHTTP serves the handler's routes and authenticates everything else.
// A site with several providers chooses the provider's handler first
// (providers.go).
func (o *OIDC) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if o.providers != nil {
		return o.providers.serveHTTP(o, w, r, next)
	}
	if route, ok := strings.CutPrefix(r.URL.Path, o.Routes+"/"); ok {
		return o.serveRoute(w, r, route, next)
	}
	if o.azat != nil && o.azat.JWKSPath() != "" && r.URL.Path == o.azat.JWKSPath() {
		o.azat.ServeJWKS(w, r)
		return nil
	}
	return o.serveAuthenticated(w, r, next, nil)
}

// serveAuthenticated authenticates a request that is not one of the
// handler's routes and sends it on. hash is the SHA-256 of its bearer token
// when the caller computed it already (nil: computed here).
func (o *OIDC) serveAuthenticated(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, hash *[32]byte) error {
	o.removeIdentityHeaders(r)

	p := o.rt.disc.Get(r.Context())
	if p == nil {
		o.logger.Warn("request refused: identity provider not discovered yet", zap.String("path", idp.Printable(r.URL.Path, 200)))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the identity provider is not reachable yet")
		return nil
	}

	id, token, ok := o.authenticate(w, r, p, hash)
	if !ok {
		return nil // answered
	}
	if id == nil {
		count(o.rt.m.verifications, "anonymous", "none")
		return o.serveAnonymous(w, r, next)
	}
	if reason := o.checkRules(id); reason != "" {
		count(o.rt.m.verifications, id.Source, "forbidden")
		o.logger.Info("request forbidden", zap.String("sub", id.Subject), zap.String("reason", reason))
		o.writeError(w, r, http.StatusForbidden, "insufficient_scope", reason)
		return nil
	}
	count(o.rt.m.verifications, id.Source, "ok")
	o.injectUpstream(r, id, token)
	return next.ServeHTTP(w, r)
}

// serveAnonymous sends a request without identity on (allow_anonymous) or
// answers it as unauthenticated.
func (o *OIDC) serveAnonymous(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if o.AllowAnonymous {
		r.Header.Del("Authorization")
		o.stripOwnCookies(r)
		return next.ServeHTTP(w, r)
	}
	o.unauthenticated(w, r, "unauthorized", "authentication required")
	return nil
}

// authenticate finds the request's identity from its bearer token or its
// session (refreshing server-side when needed). It returns the identity (nil
// when anonymous), the token to pass upstream, and false when it has already
// answered the request.
func (o *OIDC) authenticate(w http.ResponseWriter, r *http.Request, p *provider, hash *[32]byte) (*identity, upstreamTokens, bool) {
	if tok, ok := bearerToken(r); ok {
		var h [32]byte
		if hash != nil {
			h = *hash
		} else if len(tok) <= maxTokenSize { // larger ones are refused unread
			h = tokenHash(tok)
		}
		// A provider token verified before is one; anything else may be an
		// AZAT of this site (its cache or its iss tells).
		if id, ok := o.cachedBearer(h); ok {
			return id, upstreamTokens{access: tok}, true
		}
		if o.azat != nil {
			if id, up, own, ok := o.authenticateAZAT(w, r, p, tok, h); own {
				return id, up, ok
			}
		}
		id, err := o.verifyBearerUncached(r.Context(), p, tok, h)
		if err != nil {
			if errors.Is(err, errIdPUnavailable) {
				count(o.rt.m.verifications, "bearer", "unavailable")
				o.logger.Warn("bearer token check failed: provider unavailable", errField(err))
				o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the identity provider is unavailable")
				return nil, upstreamTokens{}, false
			}
			count(o.rt.m.verifications, "bearer", "invalid")
			o.logger.Info("bearer token rejected", errField(err), zap.String("remote", r.RemoteAddr))
			o.writeError(w, r, http.StatusUnauthorized, "invalid_token", "the access token is invalid")
			return nil, upstreamTokens{}, false
		}
		return id, upstreamTokens{access: tok}, true
	}

	s, err := o.loadSession(r)
	if err != nil {
		count(o.rt.m.storeErrors, "load")
		o.logger.Error("loading session failed", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "sessions are unavailable")
		return nil, upstreamTokens{}, false
	}
	if s == nil {
		o.expireDeadChunks(w, r)
		return nil, upstreamTokens{}, true
	}
	// Seed 002's server hook: an expired access token is never used (usable
	// below); a token that expires within refresh_before is refreshed first.
	now := time.Now()
	if s.refreshable() && o.needsRefresh(s.AccessToken, s.Expiry, now) {
		ns, err := o.refresh(r.Context(), p, s, false)
		switch {
		case err == nil:
			if err := o.saveSession(w, r, ns); errors.Is(err, errSessionEnded) {
				o.clearSession(w, r, nil)
				return nil, upstreamTokens{}, true
			} else if err != nil {
				o.logger.Error("saving refreshed session failed", errField(err))
			}
			s = ns
		case errors.Is(err, errGrantGone), errors.Is(err, errNoRefreshToken):
			// Refused by the provider, or nothing to refresh with (a
			// session of a grant, and azat was removed): log in again.
			o.clearSession(w, r, s)
			return nil, upstreamTokens{}, true
		default:
			if !s.usable(now) {
				o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable",
					"the identity provider is unavailable; your session is kept, retry shortly")
				return nil, upstreamTokens{}, false
			}
			// The access token still works for a little while: use it.
		}
	}
	if !s.usable(now) {
		o.clearSession(w, r, s)
		return nil, upstreamTokens{}, true
	}
	return s.Identity, upstreamTokens{access: s.AccessToken, id: s.IDToken}, true
}

// authenticateAZAT verifies a bearer token that is an AZAT of this site (own;
// any other token is left alone, with own false).
func (o *OIDC) authenticateAZAT(w http.ResponseWriter, r *http.Request, p *provider, tok string, h [32]byte) (id *identity, up upstreamTokens, own, ok bool) {
	id, up, own, err := o.verifyAZAT(r.Context(), r, p, tok, h)
	switch {
	case !own:
		return nil, upstreamTokens{}, false, false
	case err == nil:
		return id, up, true, true
	case errors.Is(err, errIdPUnavailable), errors.Is(err, azatauth.ErrStore):
		count(o.rt.m.verifications, "azat", "unavailable")
		o.logger.Warn("azat: provider or grant store unavailable", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable",
			"the identity provider is unavailable; your token is kept, retry shortly")
	case errors.Is(err, azatauth.ErrNoGrant):
		count(o.rt.m.verifications, "azat", "invalid")
		o.logger.Info("azat rejected: grant gone", zap.String("remote", r.RemoteAddr))
		o.writeError(w, r, http.StatusUnauthorized, "invalid_token", "the login behind this token has ended; log in again and get a new token")
	default:
		count(o.rt.m.verifications, "azat", "invalid")
		o.logger.Info("azat rejected", errField(err), zap.String("remote", r.RemoteAddr))
		o.writeError(w, r, http.StatusUnauthorized, "invalid_token", "the access token is invalid")
	}
	return nil, upstreamTokens{}, true, false
}

// stripOwnCookies removes this handler's cookies from the upstream request
// unless strip_cookies is off.
func (o *OIDC) stripOwnCookies(r *http.Request) {
	if o.StripCookies == nil || *o.StripCookies {
		stripCookies(r, o.cookieOpts(r))
		o.stripSiblingCookies(r)
	}
}
