package caddyoidc

import (
	"context"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// grantKey is the key of a user's grant and the sub of their AZATs.
func grantKey(id *identity) string { return id.Issuer + "#" + id.Subject }

// isAZAT tells whether a bearer token claims to be one of our AZATs (its
// unverified iss is ours); it is then verified as an AZAT and nothing else.
func (o *OIDC) isAZAT(r *http.Request, tok string) bool {
	return o.azat != nil && o.azat.Recognizes(tok, origin(r))
}

// verifyAZAT verifies an AZAT of this site (own is false for any other
// token) and returns the identity and the provider tokens to send upstream,
// refreshing them first when they are stale.
func (o *OIDC) verifyAZAT(ctx context.Context, r *http.Request, p *provider, tok string, h [32]byte) (*identity, upstreamTokens, bool, error) {
	claims, g, own, err := o.azat.VerifyOwn(ctx, tok, h, origin(r))
	if !own || err != nil {
		return nil, upstreamTokens{}, own, err
	}
	now := time.Now()
	if g.NeedsRefresh(now, time.Duration(o.RefreshBefore)) {
		ng, err := o.refreshGrant(ctx, p, claims.Subject, g.AccessToken, false)
		switch {
		case err == nil:
			g = ng
		case errors.Is(err, errGrantGone):
			return nil, upstreamTokens{}, true, azatauth.ErrNoGrant
		default:
			if g.AccessToken == "" || (g.Expiry != 0 && now.Unix() >= g.Expiry) {
				return nil, upstreamTokens{}, true, errIdPUnavailable
			}
		}
	}
	id := g.Memo(func() any {
		id := newIdentity(g.Claims, o.RolesClaim, idp.UnverifiedClaims(g.AccessToken))
		id.Source = "azat"
		id.GrantKey = claims.Subject
		return id
	}).(*identity)
	return id, upstreamTokens{access: g.AccessToken, id: g.IDToken}, true, nil
}

// refreshGrant refreshes the provider tokens of a grant: one provider call
// per grant however many requests arrive (singleflight in this process, the
// grant's storage lock across instances, and a re-read of the grant once the
// lock is held, since another instance may just have refreshed it).
//
// stale is the access token the caller found stale: once the lock is held, a
// different, unexpired token in the grant was refreshed meanwhile (perhaps
// by another instance, while this one waited for the lock) and is used as
// is, even if it too is close to its expiry.
func (o *OIDC) refreshGrant(ctx context.Context, p *provider, key, stale string, force bool) (*azatauth.Grant, error) {
	ch := o.rt.refreshes.DoChan("grant\x00"+key, func() (any, error) {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Duration(o.IdPTimeout)+5*time.Second)
		defer cancel()
		var (
			out  *azatauth.Grant
			gone bool
		)
		// A refreshed grant that could not be stored holds the live refresh
		// token (the provider may have rotated it): it wins over storage.
		pending := o.rt.pending.get(key)
		_, err := o.azat.Grants().Update(ctx, key, func(cur *azatauth.Grant) (*azatauth.Grant, error) {
			if pending != nil && cur != nil && !cur.Usable() {
				// Ended meanwhile (logout, back-channel logout, invalid_grant,
				// perhaps on another instance): the grant kept in memory ends too.
				pending = nil
				o.rt.pending.forget(key)
			}
			if pending != nil {
				// Tokens from memory, the jti window from storage (mints and
				// revocations may have happened since).
				merged := pending.Clone()
				if cur != nil {
					merged.MinJTI, merged.MaxJTI = cur.MinJTI, cur.MaxJTI
				}
				cur = merged
			}
			if !cur.Usable() {
				gone = true
				return nil, nil
			}
			now := time.Now()
			refreshedMeanwhile := stale != "" && cur.AccessToken != "" && cur.AccessToken != stale &&
				(cur.Expiry == 0 || now.Unix() < cur.Expiry)
			if refreshedMeanwhile || (!force && !cur.NeedsRefresh(now, time.Duration(o.RefreshBefore))) {
				out = cur
				if pending != nil {
					return cur, nil // store it now
				}
				return nil, nil // another request or instance refreshed it
			}
			cur = cur.Clone()
			ns, err := o.refreshAtIdP(ctx, p, grantSession(cur))
			if errors.Is(err, errGrantGone) {
				gone = true
				return cur.Tombstone(), nil // revokes every AZAT and ends pending device approvals
			}
			if err != nil {
				return nil, err
			}
			cur.AccessToken, cur.TokenType, cur.Expiry = ns.AccessToken, ns.TokenType, ns.Expiry
			cur.RefreshToken, cur.IDToken, cur.Claims = ns.RefreshToken, ns.IDToken, ns.Identity.Claims
			out = cur
			return cur, nil
		})
		if err != nil {
			if !errors.Is(err, errIdPUnavailable) {
				count(o.rt.m.storeErrors, "grant")
				if out != nil {
					// Refreshed but not stored: keep it, a later request stores it.
					o.logger.Error("storing the refreshed grant failed; kept in memory", errField(err))
					o.rt.pending.put(key, out)
					return out, nil
				}
				o.logger.Error("grant store failed during refresh", errField(err))
			}
			return nil, errIdPUnavailable
		}
		if pending != nil {
			o.rt.pending.drop(key, pending)
		}
		if gone {
			return nil, errGrantGone
		}
		return out, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*azatauth.Grant), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// grantSession views a grant as a session for refreshAtIdP.
func grantSession(g *azatauth.Grant) *session {
	id := &identity{Claims: g.Claims}
	id.Issuer, _ = g.Claims["iss"].(string)
	id.Subject, _ = g.Claims["sub"].(string)
	return &session{ID: g.Key, AccessToken: g.AccessToken, TokenType: g.TokenType, RefreshToken: g.RefreshToken,
		IDToken: g.IDToken, Expiry: g.Expiry, Identity: id}
}

// storeGrant keeps a login's refresh token as the user's grant.
func (o *OIDC) storeGrant(ctx context.Context, s *session) error {
	return o.azat.Grants().Put(ctx, &azatauth.Grant{
		Key: grantKey(s.Identity), AccessToken: s.AccessToken, TokenType: s.TokenType, Expiry: s.Expiry,
		RefreshToken: s.RefreshToken, IDToken: s.IDToken, Claims: s.Identity.Claims,
	})
}

// sessionFromGrant refreshes a grant-backed session through its grant.
func (o *OIDC) sessionFromGrant(ctx context.Context, p *provider, s *session, force bool) (*session, error) {
	g, err := o.refreshGrant(ctx, p, s.GrantKey, s.AccessToken, force)
	if err != nil {
		return nil, err
	}
	ns := *s
	ns.AccessToken, ns.TokenType, ns.Expiry, ns.IDToken = g.AccessToken, g.TokenType, g.Expiry, g.IDToken
	ns.Identity = newIdentity(g.Claims, o.RolesClaim, idp.UnverifiedClaims(g.AccessToken))
	return ns.labelIdentity(), nil
}

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
		o.logger.Warn("cross-site token request refused", zap.String("origin", printable(r.Header.Get("Origin"), 200)),
			zap.String("sec_fetch_site", printable(r.Header.Get("Sec-Fetch-Site"), 40)), zap.String("remote", r.RemoteAddr))
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
				zap.String("azp", printable(id.ClientID, 100)), zap.String("sub", id.Subject))
			o.writeError(w, r, http.StatusForbidden, "access_denied", "the access token was not issued to this site's client (azp/client_id)")
			return
		}
		// Never for a token shaped like an ID token, whatever
		// bearer_id_token_shaped says: ID tokens travel in logout URLs and
		// browser history, and would outlive the login they came from.
		if claim := idTokenMarker(id.Claims); claim != "" {
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
