package idp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/jws"
)

// AccessTokenCheck is the policy a provider-signed JWT presented as a bearer
// access token must satisfy beyond its signature (algorithm pinned to the
// provider's keys), iss, exp, nbf and iat, which are always checked. It tells
// access tokens from the other JWTs a provider signs with the same keys (ID
// tokens, logout tokens, security event tokens) and from a site's own AZATs.
type AccessTokenCheck struct {
	// Audiences: the aud claim must contain one of them.
	Audiences []string
	// RequireTyp, when set, is the only JOSE header typ accepted (compared
	// as NormalizeTyp does, e.g. at+jwt of RFC 9068); "" accepts any typ
	// that does not mark another kind of token.
	RequireTyp string
	// AcceptIDShaped accepts a token carrying an ID token's claims (nonce,
	// at_hash, c_hash), as some providers (dex) build access tokens, when its
	// aud contains ClientID.
	AcceptIDShaped bool
	// ClientID is this relying party's client_id (see AcceptIDShaped).
	ClientID string
}

// VerifyAccessToken verifies a JWT access token (RFC 9068, and the untyped
// JWTs providers issue as access tokens) presented as a bearer token, and
// returns its claims and expiry. An unknown kid causes a rate-limited JWKS
// refetch only (the token comes from anyone). The caller caches the result
// no longer than Keys().CacheUntil(exp).
func (cl *Client) VerifyAccessToken(ctx context.Context, raw string, c AccessTokenCheck) (map[string]any, time.Time, error) {
	return verifyAccessToken(ctx, cl.keys, cl.algs, cl.meta.Issuer, raw, c, time.Now)
}

func verifyAccessToken(ctx context.Context, keys *KeySet, algs []string, issuer, raw string, c AccessTokenCheck, now func() time.Time) (map[string]any, time.Time, error) {
	c.RequireTyp = NormalizeTyp(c.RequireTyp)
	// The header's typ is checked before the signature, so that a typed
	// token of another kind (an AZAT of another site) does not cause a JWKS
	// fetch.
	t, perr := jws.Parse(raw)
	typ := ""
	if perr == nil {
		typ = t.Header.Typ
	}
	if err := c.checkTyp(typ); err != nil {
		return nil, time.Time{}, err
	}
	if perr != nil {
		return nil, time.Time{}, perr
	}
	payload, err := keys.verify(ctx, t, algs)
	if err != nil {
		return nil, time.Time{}, err
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, time.Time{}, ErrMalformedJWS
	}
	if err := checkMarkers(claims); err != nil {
		return nil, time.Time{}, err
	}
	exp, err := checkTimes(claims, now()) // after a JWKS fetch the signature may have waited for
	if err != nil {
		return nil, time.Time{}, err
	}
	if iss, _ := claims["iss"].(string); iss != issuer {
		return nil, time.Time{}, fmt.Errorf("token issued by %q, not the provider", Printable(iss, 100))
	}
	if !AudienceMatches(claims["aud"], c.Audiences) {
		return nil, time.Time{}, fmt.Errorf("token audience %v is not this API", claims["aud"])
	}
	if err := c.checkIDShape(claims); err != nil {
		return nil, time.Time{}, err
	}
	if sub, _ := claims["sub"].(string); sub == "" {
		return nil, time.Time{}, errors.New("token has no sub")
	}
	return claims, exp, nil
}

// IDTokenMarker names the claim that marks claims as an ID token's (OpenID
// Connect Core 1.0 §2, §3.1.3.6, §3.3.2.11: nonce, at_hash, c_hash), or
// `typ "ID"` (Keycloak's typ claim), or "" when none does.
func IDTokenMarker(claims map[string]any) string {
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
// future beyond MaxClockSkew) and returns the expiry.
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
		if v, ok := claims[k].(float64); ok && now.Add(MaxClockSkew).Before(time.Unix(int64(v), 0)) {
			return time.Time{}, fmt.Errorf("token %s is in the future", k)
		}
	}
	return exp, nil
}

// refusedTyps are JOSE typ values (normalized, see NormalizeTyp) of JWTs
// that are never access tokens (RFC 8725 §3.11 explicit typing), with what
// they are.
var refusedTyps = map[string]string{
	"logout+jwt":   "a back-channel logout token",
	"id_token+jwt": "an ID token",
	"azat+jwt":     "an AZAT",
	"secevent+jwt": "a security event token",
	"dpop+jwt":     "a DPoP proof",
}

// NormalizeTyp makes a JOSE typ comparable: media types are compared
// case-insensitively and `application/` may be left out (RFC 7515 §4.1.9).
func NormalizeTyp(typ string) string {
	t := strings.ToLower(strings.TrimSpace(typ))
	return strings.TrimPrefix(t, "application/")
}

// ValidRequireTyp tells whether typ can be required of access tokens: not
// empty, printable, and not the typ of another kind of token.
func ValidRequireTyp(typ string) bool {
	t := NormalizeTyp(typ)
	_, refused := refusedTyps[t]
	return !refused && t != "" && Printable(t, 100) == t
}

// checkTyp refuses a header typ of another kind of token, and with
// RequireTyp (normalized) any other typ.
func (c AccessTokenCheck) checkTyp(typ string) error {
	t := NormalizeTyp(typ)
	if kind, ok := refusedTyps[t]; ok {
		return fmt.Errorf("token typ %q marks %s, not an access token", Printable(typ, 40), kind)
	}
	if c.RequireTyp != "" && t != c.RequireTyp {
		return fmt.Errorf("token typ %q is not %q (require_typ)", Printable(typ, 40), c.RequireTyp)
	}
	return nil
}

// keycloakTyps are values of Keycloak's typ claim of tokens that are not
// access tokens (its access tokens say "Bearer").
var keycloakTyps = map[string]bool{"id": true, "refresh": true, "offline": true, "logout": true}

// NonAccessTypClaim tells whether a typ claim value (Keycloak's, compared
// case-insensitively) marks an ID, refresh, offline or logout token.
func NonAccessTypClaim(typ string) bool { return keycloakTyps[strings.ToLower(typ)] }

// checkMarkers refuses claims that mark another kind of token whatever the
// options: an events claim (logout tokens, security event tokens, RFC 8417)
// and Keycloak's typ claim of ID, refresh and logout tokens.
func checkMarkers(claims map[string]any) error {
	if _, ok := claims["events"]; ok {
		return errors.New(`token has an "events" claim: a logout or security event token is not an access token`)
	}
	if t, ok := claims["typ"].(string); ok && NonAccessTypClaim(t) {
		return fmt.Errorf("token claim typ %q: not an access token", Printable(t, 40))
	}
	return nil
}

// checkIDShape refuses a token carrying an ID token's claims (nonce,
// at_hash, c_hash), naming the claim. With AcceptIDShaped (providers such
// as dex build access tokens like ID tokens), such a token is accepted when
// its aud contains the client_id; the caller has checked that the provider
// issued it.
func (c AccessTokenCheck) checkIDShape(claims map[string]any) error {
	m := IDTokenMarker(claims)
	if m == "" {
		return nil
	}
	if !c.AcceptIDShaped {
		return fmt.Errorf("token carries %s: an ID token is not an access token (bearer_id_token_shaped accept takes such tokens)", m)
	}
	if !AudienceMatches(claims["aud"], []string{c.ClientID}) {
		return fmt.Errorf("token carries %s and its aud is not the client_id", m)
	}
	return nil
}

// Printable keeps the printable ASCII of s, at most n bytes of it, for
// error messages about attacker-supplied values.
func Printable(s string, n int) string {
	out := strings.Map(func(c rune) rune {
		if c < 0x20 || c > 0x7e {
			return -1
		}
		return c
	}, s)
	if len(out) > n {
		out = out[:n]
	}
	return out
}
