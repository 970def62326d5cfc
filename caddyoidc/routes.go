package caddyoidc

import (
	"errors"
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// serveRoute dispatches <routes>/<route>.
func (o *OIDC) serveRoute(w http.ResponseWriter, r *http.Request, route string, next caddyhttp.Handler) error {
	p := o.rt.disc.Get(r.Context())
	if p == nil {
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the identity provider is not reachable yet")
		return nil
	}
	if o.BearerOnly && browserRoutes[route] {
		o.writeError(w, r, http.StatusNotFound, "not_found", "this provider offers no login")
		return nil
	}
	switch route {
	case "login":
		o.serveLogin(w, r, p)
	case "callback":
		o.serveCallback(w, r, p)
	case "refresh":
		o.serveRefresh(w, r, p)
	case "logout":
		o.serveLogout(w, r, p)
	case "logged-out":
		serveLoggedOut(w, r, o.Routes+"/login")
	case "userinfo":
		o.serveUserinfo(w, r, p)
	case "token":
		o.serveToken(w, r, p)
	case "device/code":
		o.serveDeviceCode(w, r)
	case "device/token":
		o.serveDeviceToken(w, r)
	case "device":
		o.serveDevice(w, r, p)
	case "backchannel-logout":
		o.serveBackchannelLogout(w, r, p)
	case "revoke":
		o.serveRevoke(w, r, p)
	default:
		o.writeError(w, r, http.StatusNotFound, "not_found", "no such route")
	}
	return nil
}

// browserRoutes are the routes of a login; a bearer_only provider has none.
var browserRoutes = map[string]bool{
	"login": true, "callback": true, "refresh": true, "logout": true,
	"device": true, "device/code": true, "device/token": true,
}

// serveRefresh refreshes the session's tokens now (POST) and returns what a
// single-page app's refresh component needs.
func (o *OIDC) serveRefresh(w http.ResponseWriter, r *http.Request, p *provider) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "refresh takes POST")
		return
	}
	// The answer carries the tokens: another site must not make the
	// browser ask (a form post or fetch rides on the session cookie).
	if !sameOrigin(r) {
		o.logger.Warn("cross-site refresh refused", zap.String("origin", printable(r.Header.Get("Origin"), 200)),
			zap.String("sec_fetch_site", printable(r.Header.Get("Sec-Fetch-Site"), 40)), zap.String("remote", r.RemoteAddr))
		o.writeError(w, r, http.StatusForbidden, "invalid_request", "cross-site refresh refused")
		return
	}
	s, err := o.loadSession(r)
	if err != nil {
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "sessions are unavailable")
		return
	}
	if s == nil {
		o.writeError(w, r, http.StatusUnauthorized, "unauthorized", "no session")
		return
	}
	ns, err := o.refresh(r.Context(), p, s, true)
	switch {
	case errors.Is(err, errIdPUnavailable):
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the identity provider is unavailable")
		return
	case errors.Is(err, errGrantGone):
		o.clearSession(w, r, s)
		o.writeError(w, r, http.StatusUnauthorized, "invalid_grant", "the session has ended; log in again")
		return
	case err != nil:
		o.writeError(w, r, http.StatusUnauthorized, "invalid_grant", "the session cannot be refreshed")
		return
	}
	if err := o.saveSession(w, r, ns); errors.Is(err, errSessionEnded) {
		o.clearSession(w, r, nil)
		o.writeError(w, r, http.StatusUnauthorized, "invalid_grant", "the session has ended; log in again")
		return
	} else if err != nil {
		o.logger.Error("saving refreshed session failed", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the session could not be saved")
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"access_token": ns.AccessToken,
		"id_token":     ns.IDToken,
		"token_type":   "Bearer",
		"expires_at":   ns.Expiry,
	})
}

// serveUserinfo answers the session's (or bearer token's) identity as JSON.
func (o *OIDC) serveUserinfo(w http.ResponseWriter, r *http.Request, p *provider) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "userinfo takes GET")
		return
	}
	id, tok, ok := o.authenticate(w, r, p, nil)
	if !ok {
		return
	}
	if id == nil {
		o.writeError(w, r, http.StatusUnauthorized, "unauthorized", "not logged in")
		return
	}
	body := map[string]any{
		"iss": id.Issuer, "sub": id.Subject, "email": id.Email, "name": id.Name,
		"preferred_username": id.PreferredUsername, "roles": nonNil(id.Roles), "source": id.Source,
	}
	if exp, ok := id.Claims["exp"]; ok && id.Source != "session" {
		body["expires_at"] = exp
	}
	if id.Source == "session" {
		if s, _ := o.loadSessionFor(tok); s != 0 {
			body["expires_at"] = s
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// loadSessionFor returns the access token expiry of the session that was
// just authenticated (the tokens carry no expiry of their own for opaque
// tokens, so it is read from the claims of a JWT when possible).
func (o *OIDC) loadSessionFor(tok upstreamTokens) (int64, error) {
	if c := idp.UnverifiedClaims(tok.access); c != nil {
		if exp, ok := c["exp"].(float64); ok {
			return int64(exp), nil
		}
	}
	return 0, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// sameOrigin refuses cross-site requests: with fetch metadata the browser
// must say same-origin (or none: typed by the user); else an Origin header,
// when present, must be this host. Requests with neither (curl) pass: they
// carry no ambient browser credentials of a victim.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin" || site == "none"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host == r.Host
	}
	return true
}
