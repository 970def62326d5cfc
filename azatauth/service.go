package azatauth

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
	"go.uber.org/zap"
)

// Issuer returns the iss (and default aud) for a request's origin.
func (s *Service) Issuer(origin string) string {
	if s.issuer != "" {
		return s.issuer
	}
	return origin
}

// Audience returns the aud for a request's origin.
func (s *Service) Audience(origin string) string {
	if s.audience != "" {
		return s.audience
	}
	return s.Issuer(origin)
}

// Grants returns the grant store.
func (s *Service) Grants() *GrantStore { return s.grants }

// Lifetime is the lifetime of minted tokens.
func (s *Service) Lifetime() time.Duration { return time.Duration(s.cfg.Lifetime) }

// DeviceLifetime is the lifetime of tokens minted through the device flow.
func (s *Service) DeviceLifetime() time.Duration { return time.Duration(s.cfg.DeviceLifetime) }

// DeviceClients lists the client names allowed to start the device flow;
// empty means any.
func (s *Service) DeviceClients() []string { return s.cfg.DeviceClients }

// FallbackToAccessToken tells whether users without a grant get their
// provider access token from the token route.
func (s *Service) FallbackToAccessToken() bool { return s.cfg.Fallback == "access_token" }

// JWKSPath is the path of the JWKS route, or "" when not published.
func (s *Service) JWKSPath() string {
	if s.cfg.JWKSPath == "off" {
		return ""
	}
	return s.cfg.JWKSPath
}

// KeepOnLogout tells whether a browser logout leaves the user's grant (and
// AZATs) alone (`logout keep`).
func (s *Service) KeepOnLogout() bool { return s.cfg.Logout == "keep" }

// CanMint tells whether this site mints (not verify-only).
func (s *Service) CanMint() bool { return !s.cfg.VerifyOnly }

// Minted is a freshly minted token.
type Minted struct {
	Token     string `json:"token"`
	TokenType string `json:"token_type"`
	ExpiresIn int64  `json:"expires_in"`
	ExpiresAt int64  `json:"expires_at"`
}

// Mint reserves a jti for the user's grant and signs a token for it, valid
// Lifetime. The token is verified before it is returned.
func (s *Service) Mint(ctx context.Context, grantKey, origin string) (*Minted, error) {
	return s.MintFor(ctx, grantKey, origin, s.Lifetime())
}

// MintFor is Mint with a lifetime, at most Lifetime (longer is cut to it),
// e.g. DeviceLifetime for the device flow.
func (s *Service) MintFor(ctx context.Context, grantKey, origin string, lifetime time.Duration) (*Minted, error) {
	if lifetime <= 0 || lifetime > s.Lifetime() {
		lifetime = s.Lifetime()
	}
	if s.cfg.VerifyOnly || s.signer == nil {
		return nil, errors.New("this site does not mint AZATs")
	}
	if !s.ready.Load() {
		return nil, ErrKeyUnavailable
	}
	jti, _, err := s.grants.NextJTI(ctx, grantKey)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	exp := now.Add(lifetime)
	c := &Claims{
		Issuer: s.Issuer(origin), Audience: audience{s.Audience(origin)}, Subject: grantKey,
		IssuedAt: now.Unix(), NotBefore: now.Unix(), Expiry: exp.Unix(), ID: strconv.FormatUint(jti, 10),
	}
	tok, err := Mint(ctx, s.signer, c)
	if err != nil {
		return nil, err
	}
	if _, err := Verify(tok, s.keyring.Lookup, Expectations{Issuer: c.Issuer, Audience: c.Audience[0], Now: now}); err != nil {
		return nil, fmt.Errorf("minted token does not verify (signer misconfigured?): %w", err)
	}
	return &Minted{Token: tok, TokenType: "Bearer", ExpiresIn: int64(lifetime.Seconds()), ExpiresAt: exp.Unix()}, nil
}

// ErrRevoked means the token's jti is outside its grant's window.
var ErrRevoked = errors.New("token revoked")

// verifiedToken is an entry of the verified-token cache: the claims, and
// the kid of the key that verified them, whose status is checked again on
// every use (Keyring.verifies).
type verifiedToken struct {
	claims *Claims
	kid    string
}

// Verify checks an AZAT offline (signature with a cached key, claims) and
// against its grant (revocation window). Verified tokens are cached by
// SHA-256 until their expiry, so repeated use skips the signature math; a
// cached token whose key stopped verifying since (distrusted, retired, or
// no longer listed by the trusted JWKS) is verified again, and refused.
func (s *Service) Verify(ctx context.Context, token, origin string) (*Claims, *Grant, error) {
	if len(token) > MaxTokenSize {
		return nil, nil, ErrTooLarge
	}
	h := sha256.Sum256([]byte(token))
	now := time.Now()
	v, _ := s.verified.Get(h, now)
	return s.verify(ctx, token, h, v, origin, now)
}

// VerifyOwn is Recognizes and Verify in one pass (one cache lookup), for
// the request path: own is false, and nothing is verified, for a token that
// is not to be verified as an AZAT of this site. h is the token's SHA-256.
func (s *Service) VerifyOwn(ctx context.Context, token string, h [32]byte, origin string) (c *Claims, g *Grant, own bool, err error) {
	if len(token) > MaxTokenSize {
		return nil, nil, false, nil // PeekIssuer gives no issuer either
	}
	now := time.Now()
	v, _ := s.verified.Get(h, now)
	if !s.owns(token, v.claims, origin) {
		return nil, nil, false, nil
	}
	c, g, err = s.verify(ctx, token, h, v, origin, now)
	return c, g, true, err
}

// verify finishes Verify: cached is what the cache holds for the token's
// hash h (claims nil when nothing).
func (s *Service) verify(ctx context.Context, token string, h [32]byte, cached verifiedToken, origin string, now time.Time) (*Claims, *Grant, error) {
	s.refreshKeys(ctx)
	current, retain := s.currentKid(), s.retain()
	c := cached.claims
	if c != nil && !s.expected(c, origin) {
		// Verified for another origin of this site (issuer and audience
		// default to the request's origin): check it again for this one.
		c = nil
	}
	if c != nil && !s.keyring.verifies(cached.kid, current, retain, now) {
		// Verified before its key was distrusted or retired, or before the
		// trusted JWKS stopped listing it: the cache must not keep
		// accepting it. Verify refuses it below.
		c = nil
	}
	if c == nil {
		var kid string
		var err error
		c, err = Verify(token, func(k string) jwk.Key { kid = k; return s.keyring.Usable(ctx, k, current, retain) },
			Expectations{Issuer: s.Issuer(origin), Audience: s.Audience(origin), Now: now})
		if errors.Is(err, ErrUnknownKey) {
			err = s.keyring.refusal(token, current, retain) // say why
		}
		if err != nil {
			return nil, nil, err
		}
		s.verified.Put(h, verifiedToken{claims: c, kid: kid}, time.Unix(c.Expiry, 0))
	}
	jti, _ := c.JTI()
	g, err := s.grants.Load(ctx, c.Subject)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", ErrStore, err)
	}
	if !g.JTIValid(jti) {
		return nil, nil, ErrRevoked
	}
	if !g.Usable() {
		return nil, nil, ErrNoGrant
	}
	return c, g, nil
}

// Holds tells whether the token whose SHA-256 is h is in the verified-token
// cache: a routing hint for a site with several providers (each with its
// own Service), never a verification.
func (s *Service) Holds(h [32]byte) bool {
	_, ok := s.verified.Get(h, time.Now())
	return ok
}

// Recognizes tells whether a bearer token is to be verified as an AZAT of
// this site, and as nothing else: a token this site verified before is (the
// verified-token cache answers without decoding it); any other token is
// when its unverified iss is this site's issuer. Never a verification.
func (s *Service) Recognizes(token, origin string) bool {
	var cached verifiedToken
	if len(token) <= MaxTokenSize {
		cached, _ = s.verified.Get(sha256.Sum256([]byte(token)), time.Now())
	}
	return s.owns(token, cached.claims, origin)
}

// owns is the routing rule of Recognizes and VerifyOwn: cached, the claims
// the verified-token cache holds for the token (nil when none), name this
// origin's issuer, or else the token's unverified iss does.
func (s *Service) owns(token string, cached *Claims, origin string) bool {
	if cached != nil {
		return cached.Issuer == s.Issuer(origin)
	}
	return PeekIssuer(token) == s.Issuer(origin)
}

// expected tells whether verified claims name this origin's issuer and
// audience.
func (s *Service) expected(c *Claims, origin string) bool {
	return c.Issuer == s.Issuer(origin) && slices.Contains(c.Audience, s.Audience(origin))
}

// ErrStore means the grant store failed (not the token).
var ErrStore = errors.New("grant store unavailable")

// ServeJWKS answers the public keys that verify: the current one and those
// superseded within the token lifetime + RetireMargin, never a distrusted
// one. Cached for jwksMaxAge seconds: a site trusting this JWKS reads it
// every jwksMaxAge (remoteKeyringRefresh) and refuses a kid it no longer
// lists from then on, so it drops a key retired or distrusted here within
// keyringRefresh + jwksMaxAge.
func (s *Service) ServeJWKS(w http.ResponseWriter, r *http.Request) {
	ServeJWKS(w, r, s)
}

// ServeJWKS answers the public keys of several services in one JWKS (a site
// with several providers has one AZAT key set per provider, published at
// one path), as Service.ServeJWKS does for one.
func ServeJWKS(w http.ResponseWriter, r *http.Request, services ...*Service) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	set := jwk.NewSet()
	for _, s := range services {
		s.refreshKeys(r.Context())
		ks := s.keyring.JWKS(s.currentKid(), s.retain())
		for i := 0; i < ks.Len(); i++ {
			if k, ok := ks.Key(i); ok {
				_ = set.AddKey(k)
			}
		}
	}
	b, _ := json.Marshal(set)
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age="+strconv.Itoa(jwksMaxAge))
	_, _ = w.Write(b)
}

// refreshKeys picks up keys rotated, retired or distrusted on other
// instances (every keyringRefresh; the request that finds it due waits for
// the read).
func (s *Service) refreshKeys(ctx context.Context) {
	kid, err := s.keyring.RefreshIfDue(ctx)
	switch {
	case err != nil:
		s.logger.Warn("reading the AZAT keyring failed; the keys in memory stay in use", zap.Error(err))
	case kid != "":
		s.logger.Warn("this instance's AZAT signing key was superseded by another instance's; recorded as current again "+
			"(expected during a rolling key rotation; otherwise make every instance sharing the storage sign with one key)",
			zap.String("kid", kid))
	}
}

// currentKid is the kid of this site's signing key, "" when it has none (or
// it is not loaded yet).
func (s *Service) currentKid() string {
	if s.signer == nil {
		return ""
	}
	if k, err := s.signer.PublicKey(); err == nil {
		return k.KeyID()
	}
	return ""
}

// retain is how long a superseded key keeps verifying: tokens it signed
// live at most the lifetime.
func (s *Service) retain() time.Duration { return s.Lifetime() + RetireMargin }
