package caddyoidc

import (
	"context"
	"errors"
	"net/http"
	"time"

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
	if o.needsRefresh(g.AccessToken, g.Expiry, now) {
		ng, err := o.refreshGrant(ctx, p, claims.Subject, g.AccessToken, false)
		switch {
		case err == nil:
			g = ng
		case errors.Is(err, errGrantGone):
			return nil, upstreamTokens{}, true, azatauth.ErrNoGrant
		default:
			if !tokenUsable(g.AccessToken, g.Expiry, now) {
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

// storeGrant keeps a login's refresh token as the user's grant.
func (o *OIDC) storeGrant(ctx context.Context, s *session) error {
	if err := o.azat.Grants().Put(ctx, &azatauth.Grant{
		Key: grantKey(s.Identity), AccessToken: s.AccessToken, TokenType: s.TokenType, Expiry: s.Expiry,
		RefreshToken: s.RefreshToken, IDToken: s.IDToken, Claims: s.Identity.Claims,
	}); err != nil {
		return err
	}
	// A refresh of an earlier login kept in memory is not used again (only
	// once this login is stored: until then it may hold the live token).
	o.rt.unstored.forget(grantKey(s.Identity))
	return nil
}
