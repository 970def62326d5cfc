package caddyoidc

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"time"
	"unsafe"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// maxTokenSize bounds a bearer token; larger ones are refused unparsed.
const maxTokenSize = 16 << 10

var (
	errTokenTooLarge = errors.New("token too large")
	errOpaqueToken   = errors.New("opaque token and introspection is not enabled")
)

// bearerToken extracts the token of an `Authorization: Bearer` header.
func bearerToken(r *http.Request) (string, bool) {
	h := r.Header.Get("Authorization")
	if len(h) < 7 || !strings.EqualFold(h[:7], "bearer ") {
		return "", false
	}
	tok := strings.TrimSpace(h[7:])
	return tok, tok != "" // "Bearer" alone carries no credentials
}

func isJWT(tok string) bool { return strings.Count(tok, ".") == 2 }

// verifyBearer verifies a provider-issued access token: a JWT offline with
// the provider's keys, an opaque token by introspection. Results are cached
// by the token's SHA-256 until its expiry.
func (o *OIDC) verifyBearer(ctx context.Context, p *provider, tok string) (*identity, error) {
	if len(tok) > maxTokenSize {
		return nil, errTokenTooLarge
	}
	h := tokenHash(tok)
	if id, ok := o.cachedBearer(h); ok {
		return id, nil
	}
	return o.verifyBearerUncached(ctx, p, tok, h)
}

// cachedBearer returns the identity of a provider token (of hash h)
// verified before and not expired.
func (o *OIDC) cachedBearer(h [32]byte) (*identity, bool) {
	id, ok := o.rt.introspected.Get(h, time.Now())
	if ok {
		count(o.rt.m.cacheHits, "bearer")
	}
	return id, ok
}

// verifyBearerUncached verifies a provider token not in the cache, and
// caches the result: a JWT until its expiry, an opaque token's remote
// answer for at most introspection_cache (see verifyRemote).
func (o *OIDC) verifyBearerUncached(ctx context.Context, p *provider, tok string, h [32]byte) (*identity, error) {
	if len(tok) > maxTokenSize {
		return nil, errTokenTooLarge
	}
	if !isJWT(tok) {
		if !o.Introspection && o.TokeninfoEndpoint == "" {
			return nil, errOpaqueToken
		}
		return o.verifyRemote(ctx, p, tok, h)
	}
	id, exp, err := o.verifyJWTAccessToken(ctx, p, tok)
	if err != nil {
		return nil, err
	}
	o.rt.introspected.Put(h, id, exp)
	return id, nil
}

// verifyJWTAccessToken verifies a JWT access token with the provider's keys
// (idp.Client.VerifyAccessToken: signature, typ, iss, aud, times, token
// kind) and builds its identity, cacheable until the returned time.
func (o *OIDC) verifyJWTAccessToken(ctx context.Context, p *provider, tok string) (*identity, time.Time, error) {
	claims, exp, err := p.VerifyAccessToken(ctx, tok, o.accessTokenCheck())
	if err != nil {
		return nil, time.Time{}, err
	}
	id := newIdentity(claims, o.RolesClaim, nil)
	id.Source = "bearer"
	return id, p.Keys().CacheUntil(exp), nil // re-verified after a JWKS refetch
}

// accessTokenCheck is this handler's policy for JWT access tokens: aud
// names this API (audience), require_typ, bearer_id_token_shaped.
func (o *OIDC) accessTokenCheck() idp.AccessTokenCheck {
	return idp.AccessTokenCheck{Audiences: o.rt.audience, RequireTyp: o.RequireTyp,
		AcceptIDShaped: o.BearerIDTokenShaped == "accept", ClientID: o.rt.clientID}
}

// validateBearer checks the bearer token options.
func (o *OIDC) validateBearer() error {
	switch o.BearerIDTokenShaped {
	case "", "refuse", "accept":
	default:
		return fmt.Errorf("oidc: bearer_id_token_shaped must be refuse or accept, not %q", o.BearerIDTokenShaped)
	}
	if o.RequireTyp != "" && !idp.ValidRequireTyp(o.RequireTyp) {
		return fmt.Errorf("oidc: require_typ %q cannot be an access token's typ", o.RequireTyp)
	}
	if o.MintFromBearer && o.AZAT == nil {
		return errors.New("oidc: mint_from_bearer needs azat")
	}
	return nil
}

// warnBearerAudience warns at start-up when bearer tokens are accepted with
// the client_id as audience: the client's ID tokens and logout tokens carry
// that aud too, so only their other claims tell them from access tokens.
func (o *OIDC) warnBearerAudience(rt *runtime) {
	if !slices.Contains(rt.audience, rt.clientID) {
		return
	}
	o.logger.Warn("bearer tokens are accepted with the client_id as audience, the aud of this client's ID tokens "+
		"and logout tokens too; an API audience distinct from the client_id (audience <api>, set up at the provider) "+
		"separates access tokens from ID tokens",
		zap.String("client_id", rt.clientID), zap.Bool("default_audience", len(o.Audience) == 0))
}

// tokenHash hashes a token without copying it (Sum256 only reads).
func tokenHash(tok string) [32]byte {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(tok), len(tok)))
}
