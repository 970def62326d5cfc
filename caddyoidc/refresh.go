package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"go.uber.org/zap"
	"golang.org/x/oauth2"
)

var (
	// errGrantGone: the provider says the refresh token is no longer valid
	// (see refreshTokenRefused); the session must end.
	errGrantGone = errors.New("refresh token no longer valid")
	// errIdPUnavailable: the provider could not be reached; keep the tokens.
	errIdPUnavailable = errors.New("identity provider unavailable")
	// errNoRefreshToken: the session has nothing to refresh with.
	errNoRefreshToken = errors.New("no refresh token")
)

// refreshKey identifies one refresh: the session and the refresh token it
// would spend.
func refreshKey(s *session) string {
	h := sha256.Sum256([]byte(s.ID + "\x00" + s.RefreshToken))
	return hex.EncodeToString(h[:16])
}

// refresh returns the session with fresh tokens. Concurrent calls for one
// session share one provider call (singleflight); with the session store,
// instances sharing storage serialize on a storage lock and re-read the
// record, so a refresh another instance just made is reused.
func (o *OIDC) refresh(ctx context.Context, p *provider, s *session, force bool) (*session, error) {
	if s.GrantKey != "" && o.azat != nil {
		return o.sessionFromGrant(ctx, p, s, force)
	}
	if s.RefreshToken == "" {
		return nil, errNoRefreshToken
	}
	key := refreshKey(s)
	if ns := o.rt.recent.get(key); ns != nil {
		return ns, nil
	}
	ch := o.rt.refreshes.DoChan(key, func() (any, error) {
		// Detached from the first caller's cancellation: the others wait too.
		ctx := context.WithoutCancel(ctx)
		ctx, cancel := context.WithTimeout(ctx, 2*time.Duration(o.IdPTimeout))
		defer cancel()
		if ns := o.rt.recent.get(key); ns != nil {
			return ns, nil
		}
		ns, persisted, err := o.refreshLocked(ctx, p, s)
		switch {
		case err != nil:
		case persisted:
			o.rt.recent.put(key, ns)
		default:
			// Kept in memory until a later request manages to store it.
			o.rt.recent.putFor(key, ns, unpersistedTTL)
		}
		return ns, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*session), nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// refreshLocked refreshes s; with the session store, under the session's
// storage lock. persisted tells whether the result is in storage.
func (o *OIDC) refreshLocked(ctx context.Context, p *provider, s *session) (*session, bool, error) {
	if o.Session != "store" {
		ns, err := o.refreshAtIdP(ctx, p, s)
		return ns, true, err
	}
	lock := sessionKey(s.ID)
	if err := o.storage.Lock(ctx, lock); err != nil {
		count(o.rt.m.storeErrors, "lock")
		o.logger.Error("session store lock failed", errField(err))
		return nil, false, errIdPUnavailable
	}
	defer func() {
		if err := o.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			o.logger.Error("session store unlock failed", errField(err))
		}
	}()
	cur, err := o.loadStored(ctx, s.ID)
	if err != nil {
		count(o.rt.m.storeErrors, "load")
		o.logger.Error("session store load failed", errField(err))
		return nil, false, errIdPUnavailable
	}
	if cur == nil {
		return nil, false, errGrantGone // logged out meanwhile
	}
	if cur.AccessToken != s.AccessToken && cur.usable(time.Now()) {
		return cur, true, nil // another instance refreshed meanwhile
	}
	ns, err := o.refreshAtIdP(ctx, p, cur)
	if err != nil {
		if errors.Is(err, errGrantGone) {
			_ = o.deleteStoredLocked(ctx, s.ID)
		}
		return nil, false, err
	}
	if err := o.storeSession(ctx, ns); err != nil {
		// The provider may have rotated the refresh token: the new session
		// is kept in memory and stored by a later request (saveSession).
		count(o.rt.m.storeErrors, "store")
		o.logger.Error("storing refreshed session failed; kept in memory", errField(err))
		return ns, false, nil
	}
	return ns, true, nil
}

// refreshTokenRefused tells whether a token endpoint's answer to a refresh
// says, definitively, that the refresh token is no longer good: an OAuth
// error response (RFC 6749 section 5.2) with a 4xx status and error
// invalid_grant, or invalid_request with status 400, which is what dex
// answers for a spent, unknown or expired refresh token. Anything else (5xx,
// a network error, invalid_client, a body that is no OAuth error) keeps the
// session: a failed refresh must never end a session whose tokens still work.
func refreshTokenRefused(re *oauth2.RetrieveError) bool {
	status := 0
	if re.Response != nil {
		status = re.Response.StatusCode
	}
	switch re.ErrorCode {
	case "invalid_grant":
		return status >= 400 && status < 500
	case "invalid_request":
		return status == 400
	}
	return false
}

// refreshAtIdP spends s's refresh token at the token endpoint and verifies
// what comes back.
func (o *OIDC) refreshAtIdP(ctx context.Context, p *provider, s *session) (*session, error) {
	start := time.Now()
	ts := o.oauth2Config(p, "").TokenSource(o.idpContext(ctx), &oauth2.Token{RefreshToken: s.RefreshToken})
	tok, err := ts.Token()
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && refreshTokenRefused(re) {
			o.observeRefresh(start, "invalid_grant")
			o.logger.Info("refresh refused by the provider; session ends", zap.String("sub", s.Identity.Subject))
			return nil, errGrantGone
		}
		o.observeRefresh(start, "unavailable")
		o.logger.Warn("refresh failed; keeping tokens", zap.String("sub", s.Identity.Subject), errField(err))
		return nil, errIdPUnavailable
	}
	o.observeRefresh(start, "success")
	ns := *s
	ns.AccessToken = tok.AccessToken
	ns.TokenType = tok.TokenType
	ns.Expiry = 0
	if !tok.Expiry.IsZero() {
		ns.Expiry = tok.Expiry.Unix()
	}
	if tok.RefreshToken != "" {
		ns.RefreshToken = tok.RefreshToken
	}
	if rawID, _ := tok.Extra("id_token").(string); rawID != "" {
		claims, err := verifyIDToken(ctx, p.idTokens, rawID, idTokenCheck{
			clientID: o.rt.clientID, accessToken: tok.AccessToken,
			prevIss: s.Identity.Issuer, prevSub: s.Identity.Subject,
		})
		if err != nil {
			// A provider that answers with a bad ID token is not to be trusted
			// with this session any more.
			o.logger.Warn("refreshed id token rejected; session ends", zap.String("sub", s.Identity.Subject), errField(err))
			return nil, errGrantGone
		}
		// Keep the claims that came from elsewhere (userinfo at login), not
		// those the previous ID token asserted: a claim the provider dropped
		// (a removed group) is gone.
		prev := unverifiedClaims(s.IDToken)
		for k, v := range s.Identity.Claims {
			if _, ok := claims[k]; ok {
				continue
			}
			if _, asserted := prev[k]; asserted {
				continue
			}
			claims[k] = v
		}
		ns.IDToken = rawID
		ns.Identity = newIdentity(claims, o.RolesClaim, unverifiedClaims(tok.AccessToken))
		if sid, _ := claims["sid"].(string); sid != "" {
			ns.ProviderSID = sid
		}
	} else if roles := newIdentity(s.Identity.Claims, o.RolesClaim, unverifiedClaims(tok.AccessToken)).Roles; roles != nil {
		id := s.Identity.clone()
		id.Roles = roles
		ns.Identity = id
	} else {
		ns.Identity = s.Identity.clone() // never share the old session's identity
	}
	o.logger.Debug("refreshed", zap.String("sub", s.Identity.Subject), zap.Duration("took", time.Since(start)))
	return ns.labelIdentity(), nil
}
