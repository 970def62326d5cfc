package caddyoidc

import (
	"errors"
	"net/http"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// The session's own routes: <routes>/refresh (new tokens now, for a
// single-page app) and <routes>/userinfo (who is logged in).

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
		o.logger.Warn("cross-site refresh refused", zap.String("origin", idp.Printable(r.Header.Get("Origin"), 200)),
			zap.String("sec_fetch_site", idp.Printable(r.Header.Get("Sec-Fetch-Site"), 40)), zap.String("remote", r.RemoteAddr))
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
		if exp := accessTokenExpiry(tok.access); exp != 0 {
			body["expires_at"] = exp
		}
	}
	writeJSON(w, http.StatusOK, body)
}

// accessTokenExpiry is the expiry of the session's access token when it is
// a JWT (read from its claims: it was verified by the provider's answer it
// came in); 0 when unknown.
func accessTokenExpiry(tok string) int64 {
	if c := idp.UnverifiedClaims(tok); c != nil {
		if exp, ok := c["exp"].(float64); ok {
			return int64(exp)
		}
	}
	return 0
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
