package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

var (
	// errGrantGone: the provider says the refresh token is no longer valid
	// (invalid_grant); the session must end.
	errGrantGone = errors.New("refresh token no longer valid")
	// errIdPUnavailable: the provider could not be reached; keep the tokens.
	errIdPUnavailable = idp.ErrUnavailable
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
		ns, persisted, err := o.rt.sessions.refresh(ctx, s, func(ctx context.Context, s *session) (*session, error) {
			return o.refreshAtIdP(ctx, p, s)
		})
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

// refreshAtIdP spends s's refresh token at the token endpoint and verifies
// what comes back.
func (o *OIDC) refreshAtIdP(ctx context.Context, p *provider, s *session) (*session, error) {
	start := time.Now()
	tok, err := p.Refresh(ctx, s.RefreshToken)
	if err != nil {
		if idp.RefreshTokenDead(err) {
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
	if rawID := tok.IDToken; rawID != "" {
		claims, err := p.VerifyIDToken(ctx, rawID, idp.IDTokenCheck{
			AccessToken: tok.AccessToken, PrevIss: s.Identity.Issuer, PrevSub: s.Identity.Subject,
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
		prev := idp.UnverifiedClaims(s.IDToken)
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
		ns.Identity = newIdentity(claims, o.RolesClaim, idp.UnverifiedClaims(tok.AccessToken))
		if sid, _ := claims["sid"].(string); sid != "" {
			ns.ProviderSID = sid
		}
	} else if roles := newIdentity(s.Identity.Claims, o.RolesClaim, idp.UnverifiedClaims(tok.AccessToken)).Roles; roles != nil {
		id := s.Identity.clone()
		id.Roles = roles
		ns.Identity = id
	} else {
		ns.Identity = s.Identity.clone() // never share the old session's identity
	}
	o.logger.Debug("refreshed", zap.String("sub", s.Identity.Subject), zap.Duration("took", time.Since(start)))
	return ns.labelIdentity(), nil
}
