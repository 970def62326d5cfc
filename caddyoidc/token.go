package caddyoidc

import (
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// The AZAT routes: <routes>/token mints an AZAT, <routes>/revoke revokes one
// (or all of the user's).

// serveToken mints an AZAT for the caller's browser session; for a provider
// bearer token only with mint_from_bearer, and only when the token was
// issued to this client (azp, else client_id). An AZAT cannot be exchanged
// for another, and cross-site browser requests are refused.
func (o *OIDC) serveToken(w http.ResponseWriter, r *http.Request, p *provider) {
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "token takes GET")
		return
	}
	if o.azat == nil || !o.azat.CanMint() {
		o.writeError(w, r, http.StatusNotFound, "not_found", "this site does not mint tokens")
		return
	}
	if !sameOrigin(r) {
		o.logger.Warn("cross-site token request refused", zap.String("origin", idp.Printable(r.Header.Get("Origin"), 200)),
			zap.String("sec_fetch_site", idp.Printable(r.Header.Get("Sec-Fetch-Site"), 40)), zap.String("remote", r.RemoteAddr))
		o.writeError(w, r, http.StatusForbidden, "invalid_request", "cross-site token request refused; open this page from the site itself")
		return
	}
	if tok, ok := bearerToken(r); ok {
		if o.isAZAT(r, tok) {
			o.writeError(w, r, http.StatusBadRequest, "invalid_request", "an AZAT cannot be exchanged for another; use your provider login")
			return
		}
		if !o.MintFromBearer {
			o.logger.Info("azat mint from a bearer token refused: mint_from_bearer is off", zap.String("remote", r.RemoteAddr))
			o.writeError(w, r, http.StatusForbidden, "access_denied",
				"tokens are minted for a browser session ("+o.Routes+"/token while logged in) or by the device flow, not for a bearer token")
			return
		}
	}
	id, tok, ok := o.authenticate(w, r, p, nil)
	if !ok {
		return
	}
	if id == nil {
		o.unauthenticated(w, r, "unauthorized", "log in first")
		return
	}
	switch id.Source {
	case "session":
	case "bearer", "introspection", "tokeninfo":
		// mint_from_bearer is on (checked above): the token must have been
		// issued to this client, not merely name this API in its aud.
		if !o.MintFromBearer || id.ClientID != o.rt.clientID {
			o.logger.Info("azat mint refused: the bearer token was issued to another client",
				zap.String("azp", idp.Printable(id.ClientID, 100)), zap.String("sub", id.Subject))
			o.writeError(w, r, http.StatusForbidden, "access_denied", "the access token was not issued to this site's client (azp/client_id)")
			return
		}
		// Never for a token shaped like an ID token, whatever
		// bearer_id_token_shaped says: ID tokens travel in logout URLs and
		// browser history, and would outlive the login they came from.
		if claim := idp.IDTokenMarker(id.Claims); claim != "" {
			o.logger.Info("azat mint refused: the bearer token is shaped like an ID token", zap.String("claim", claim))
			o.writeError(w, r, http.StatusForbidden, "access_denied", "an ID token cannot be exchanged for a token")
			return
		}
	default:
		o.writeError(w, r, http.StatusBadRequest, "invalid_request", "an AZAT cannot be exchanged for another; use your provider login")
		return
	}
	key := id.GrantKey
	if key == "" {
		key = grantKey(id)
	}
	m, err := o.azat.Mint(r.Context(), key, origin(r))
	switch {
	case err == nil:
		count(o.rt.m.mints, "success")
		o.logger.Info("azat minted", zap.String("sub", key), zap.Int64("expires_at", m.ExpiresAt))
		writeJSON(w, http.StatusOK, m)
	case errors.Is(err, azatauth.ErrNoGrant):
		if o.azat.FallbackToAccessToken() {
			count(o.rt.m.mints, "fallback")
			exp := int64(0)
			if c := idp.UnverifiedClaims(tok.access); c != nil {
				if e, ok := c["exp"].(float64); ok {
					exp = int64(e)
				}
			}
			body := map[string]any{"token": tok.access, "token_type": "Bearer", "expires_at": exp}
			if exp != 0 {
				body["expires_in"] = max(0, exp-time.Now().Unix())
			}
			writeJSON(w, http.StatusOK, body)
			return
		}
		count(o.rt.m.mints, "no_grant")
		writeJSON(w, http.StatusConflict, oauthError{Error: "no_grant",
			ErrorDescription: "no refresh token is stored for you: log in again at " + o.Routes +
				"/login with offline access (scope offline_access, or the provider's equivalent), then ask again"})
	case errors.Is(err, azatauth.ErrKeyUnavailable):
		count(o.rt.m.mints, "unavailable")
		o.logger.Warn("azat mint: signing key unavailable", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the signing key is not available yet")
	default:
		count(o.rt.m.mints, "unavailable")
		o.logger.Error("azat mint failed", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "could not mint a token")
	}
}

// serveRevoke ends every AZAT of the caller, on every instance.
func (o *OIDC) serveRevoke(w http.ResponseWriter, r *http.Request, p *provider) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "revoke takes POST")
		return
	}
	if o.azat == nil {
		o.writeError(w, r, http.StatusNotFound, "not_found", "this site has no tokens to revoke")
		return
	}
	if !sameOrigin(r) {
		o.writeError(w, r, http.StatusForbidden, "invalid_request", "cross-site revocation refused")
		return
	}
	id, _, ok := o.authenticate(w, r, p, nil)
	if !ok {
		return
	}
	if id == nil {
		o.writeError(w, r, http.StatusUnauthorized, "unauthorized", "log in first")
		return
	}
	key := id.GrantKey
	if key == "" {
		key = grantKey(id)
	}
	if err := o.azat.Grants().Revoke(r.Context(), key); err != nil {
		o.logger.Error("azat revoke failed", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "could not revoke")
		return
	}
	o.logger.Info("azats revoked", zap.String("sub", key))
	writeJSON(w, http.StatusOK, map[string]any{"revoked": true})
}
