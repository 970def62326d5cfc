package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
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

// verifyJWTAccessToken checks signature (alg pinned to the provider's keys),
// iss, exp, nbf, and that aud names this API: tokens issued for other
// clients or APIs of the same provider are refused. Tokens of another kind
// are refused too (tokenKind): typed JWTs (logout, ID, AZAT, security
// event), tokens with an events claim, and ID-token-shaped ones unless
// bearer_id_token_shaped accepts them.
func (o *OIDC) verifyJWTAccessToken(ctx context.Context, p *provider, tok string) (*identity, time.Time, error) {
	// The header's typ is read before the signature is checked, so that a
	// typed token of another kind (an AZAT of another site) does not cause
	// a JWKS fetch; it only ever refuses.
	rules := o.tokenRules()
	if err := rules.checkTyp(peekTyp(tok)); err != nil {
		return nil, time.Time{}, err
	}
	hdr, payload, err := p.Keys().VerifyJWS(ctx, tok, p.Algs())
	if err != nil {
		return nil, time.Time{}, err
	}
	if err := rules.checkTyp(hdr.Typ); err != nil {
		return nil, time.Time{}, err
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, time.Time{}, idp.ErrMalformedJWS
	}
	if err := rules.checkMarkers(claims); err != nil {
		return nil, time.Time{}, err
	}
	exp, err := checkTimes(claims, time.Now())
	if err != nil {
		return nil, time.Time{}, err
	}
	if iss, _ := claims["iss"].(string); iss != p.Metadata().Issuer {
		return nil, time.Time{}, fmt.Errorf("token issued by %q, not the provider", printable(iss, 100))
	}
	if !idp.AudienceMatches(claims["aud"], o.rt.audience) {
		return nil, time.Time{}, fmt.Errorf("token audience %v is not this API", claims["aud"])
	}
	if err := rules.checkIDShape(claims); err != nil {
		return nil, time.Time{}, err
	}
	if sub, _ := claims["sub"].(string); sub == "" {
		return nil, time.Time{}, errors.New("token has no sub")
	}
	id := newIdentity(claims, o.RolesClaim, nil)
	id.Source = "bearer"
	return id, p.Keys().CacheUntil(exp), nil // re-verified after a JWKS refetch
}

// isIDToken recognises an ID token presented as an access token by the
// claims only ID tokens carry (idTokenMarker).
func isIDToken(claims map[string]any) bool { return idTokenMarker(claims) != "" }

// idTokenMarker names the claim that marks claims as an ID token's (OpenID
// Connect Core 1.0 §2, §3.1.3.6, §3.3.2.11: nonce, at_hash, c_hash), or
// `typ "ID"` (Keycloak's typ claim), or "" when none does.
func idTokenMarker(claims map[string]any) string {
	for _, k := range []string{"nonce", "at_hash", "c_hash"} {
		if _, ok := claims[k]; ok {
			return k
		}
	}
	if claims["typ"] == "ID" {
		return `typ "ID"`
	}
	return ""
}

// checkTimes checks exp (required, in the future), nbf and iat (not in the
// future beyond idp.MaxClockSkew) and returns the expiry.
func checkTimes(claims map[string]any, now time.Time) (time.Time, error) {
	expF, ok := claims["exp"].(float64)
	if !ok {
		return time.Time{}, errors.New("token has no exp")
	}
	exp := time.Unix(int64(expF), 0)
	if !now.Before(exp) {
		return time.Time{}, errors.New("token expired")
	}
	for _, k := range []string{"nbf", "iat"} {
		if v, ok := claims[k].(float64); ok && now.Add(idp.MaxClockSkew).Before(time.Unix(int64(v), 0)) {
			return time.Time{}, fmt.Errorf("token %s is in the future", k)
		}
	}
	return exp, nil
}

// refusedTyps are JOSE typ values (normalized, see normalizeTyp) of JWTs
// that are never access tokens (RFC 8725 §3.11 explicit typing), with what
// they are.
var refusedTyps = map[string]string{
	"logout+jwt":   "a back-channel logout token",
	"id_token+jwt": "an ID token",
	"azat+jwt":     "an AZAT",
	"secevent+jwt": "a security event token",
	"dpop+jwt":     "a DPoP proof",
}

// normalizeTyp makes a JOSE typ comparable: media types are compared
// case-insensitively and `application/` may be left out (RFC 7515 §4.1.9).
func normalizeTyp(typ string) string {
	t := strings.ToLower(strings.TrimSpace(typ))
	return strings.TrimPrefix(t, "application/")
}

// peekTyp returns the typ of a compact JWS header without verifying
// anything ("" when there is none or the header does not parse, which the
// verification then refuses).
func peekTyp(tok string) string {
	dot := strings.IndexByte(tok, '.')
	if dot < 0 {
		return ""
	}
	b, err := base64.RawURLEncoding.DecodeString(tok[:dot])
	if err != nil {
		return ""
	}
	var h struct {
		Typ string `json:"typ"`
	}
	if json.Unmarshal(b, &h) != nil {
		return ""
	}
	return h.Typ
}

// tokenRules tell bearer access tokens from the other JWTs a provider signs
// with the same keys (ID tokens, logout tokens) and from this proxy's own.
type tokenRules struct {
	requireTyp     string // normalized require_typ; "" accepts any typ not refused
	acceptIDShaped bool   // bearer_id_token_shaped accept
	clientID       string
}

func (o *OIDC) tokenRules() tokenRules {
	return tokenRules{requireTyp: normalizeTyp(o.RequireTyp), acceptIDShaped: o.BearerIDTokenShaped == "accept",
		clientID: o.rt.clientID}
}

// checkTyp refuses a header typ of another kind of token, and with
// require_typ any other typ.
func (r tokenRules) checkTyp(typ string) error {
	t := normalizeTyp(typ)
	if kind, ok := refusedTyps[t]; ok {
		return fmt.Errorf("token typ %q marks %s, not an access token", printable(typ, 40), kind)
	}
	if r.requireTyp != "" && t != r.requireTyp {
		return fmt.Errorf("token typ %q is not %q (require_typ)", printable(typ, 40), r.requireTyp)
	}
	return nil
}

// keycloakTyps are values of Keycloak's typ claim of tokens that are not
// access tokens (its access tokens say "Bearer").
var keycloakTyps = map[string]bool{"id": true, "refresh": true, "offline": true, "logout": true}

// checkMarkers refuses claims that mark another kind of token whatever the
// options: an events claim (logout tokens, security event tokens, RFC 8417)
// and Keycloak's typ claim of ID, refresh and logout tokens.
func (r tokenRules) checkMarkers(claims map[string]any) error {
	if _, ok := claims["events"]; ok {
		return errors.New(`token has an "events" claim: a logout or security event token is not an access token`)
	}
	if t, ok := claims["typ"].(string); ok && keycloakTyps[strings.ToLower(t)] {
		return fmt.Errorf("token claim typ %q: not an access token", printable(t, 40))
	}
	return nil
}

// checkIDShape refuses a token carrying an ID token's claims (nonce,
// at_hash, c_hash), naming the claim. With bearer_id_token_shaped accept
// (providers such as dex build access tokens like ID tokens), such a token
// is accepted when its aud contains the client_id; the caller has checked
// that the provider issued it.
func (r tokenRules) checkIDShape(claims map[string]any) error {
	m := idTokenMarker(claims)
	if m == "" {
		return nil
	}
	if !r.acceptIDShaped {
		return fmt.Errorf("token carries %s: an ID token is not an access token (bearer_id_token_shaped accept takes such tokens)", m)
	}
	if !idp.AudienceMatches(claims["aud"], []string{r.clientID}) {
		return fmt.Errorf("token carries %s and its aud is not the client_id", m)
	}
	return nil
}

// validateBearer checks the bearer token options.
func (o *OIDC) validateBearer() error {
	switch o.BearerIDTokenShaped {
	case "", "refuse", "accept":
	default:
		return fmt.Errorf("oidc: bearer_id_token_shaped must be refuse or accept, not %q", o.BearerIDTokenShaped)
	}
	if o.RequireTyp != "" {
		t := normalizeTyp(o.RequireTyp)
		if _, bad := refusedTyps[t]; bad || t == "" || printable(t, 100) != t {
			return fmt.Errorf("oidc: require_typ %q cannot be an access token's typ", o.RequireTyp)
		}
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
