package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
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
		count(metrics.cacheHits, "bearer")
	}
	return id, ok
}

// verifyBearerUncached verifies a provider token not in the cache, and
// caches the result.
func (o *OIDC) verifyBearerUncached(ctx context.Context, p *provider, tok string, h [32]byte) (*identity, error) {
	if len(tok) > maxTokenSize {
		return nil, errTokenTooLarge
	}
	var (
		id  *identity
		exp time.Time
		err error
	)
	if isJWT(tok) {
		id, exp, err = o.verifyJWTAccessToken(ctx, p, tok)
	} else if o.Introspection {
		id, exp, err = o.introspect(ctx, p, tok)
	} else if o.TokeninfoEndpoint != "" {
		id, exp, err = o.tokeninfo(ctx, p, tok)
	} else {
		err = errOpaqueToken
	}
	if err != nil {
		return nil, err
	}
	o.rt.introspected.Put(h, id, exp)
	return id, nil
}

// verifyJWTAccessToken checks signature (alg pinned to the provider's keys),
// iss, exp, nbf, and that aud names this API: tokens issued for other
// clients or APIs of the same provider are refused. ID tokens (they carry a
// nonce) are refused too: they are not access tokens.
func (o *OIDC) verifyJWTAccessToken(ctx context.Context, p *provider, tok string) (*identity, time.Time, error) {
	_, payload, err := p.keys.verifyCompact(ctx, tok, p.algs)
	if err != nil {
		return nil, time.Time{}, err
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, time.Time{}, errMalformedJWS
	}
	exp, err := checkTimes(claims, time.Now())
	if err != nil {
		return nil, time.Time{}, err
	}
	if iss, _ := claims["iss"].(string); iss != p.meta.Issuer {
		return nil, time.Time{}, fmt.Errorf("token issued by %q, not the provider", printable(iss, 100))
	}
	if !audienceMatches(claims["aud"], o.rt.audience) {
		return nil, time.Time{}, fmt.Errorf("token audience %v is not this API", claims["aud"])
	}
	if isIDToken(claims) {
		return nil, time.Time{}, errors.New("an ID token is not an access token")
	}
	if sub, _ := claims["sub"].(string); sub == "" {
		return nil, time.Time{}, errors.New("token has no sub")
	}
	id := newIdentity(claims, o.RolesClaim, nil)
	id.Source = "bearer"
	return id, p.keys.cacheUntil(exp), nil // re-verified after a JWKS refetch
}

// introspect asks the provider about an opaque token (RFC 7662).
func (o *OIDC) introspect(ctx context.Context, p *provider, tok string) (*identity, time.Time, error) {
	endpoint := o.rt.introspectionURL
	if endpoint == "" {
		endpoint = p.meta.IntrospectionEndpoint
	}
	if endpoint == "" {
		return nil, time.Time{}, errors.New("the provider advertises no introspection endpoint")
	}
	form := url.Values{"token": {tok}, "token_type_hint": {"access_token"}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, time.Time{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(url.QueryEscape(o.rt.clientID), url.QueryEscape(o.rt.clientSecret))
	resp, err := o.rt.httpClient.Do(req)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: introspection: %v", errIdPUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		return nil, time.Time{}, fmt.Errorf("%w: introspection status %d", errIdPUnavailable, resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, time.Time{}, fmt.Errorf("introspection status %d", resp.StatusCode)
	}
	var claims map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&claims); err != nil {
		return nil, time.Time{}, fmt.Errorf("introspection: %v", err)
	}
	if active, _ := claims["active"].(bool); !active {
		return nil, time.Time{}, errors.New("token is not active")
	}
	if iss, ok := claims["iss"].(string); ok && iss != p.meta.Issuer {
		return nil, time.Time{}, errors.New("token from another issuer")
	}
	if aud, ok := claims["aud"]; ok {
		if !audienceMatches(aud, o.rt.audience) {
			return nil, time.Time{}, fmt.Errorf("token audience %v is not this API", aud)
		}
	} else if cid, _ := claims["client_id"].(string); cid != o.rt.clientID {
		return nil, time.Time{}, errors.New("token issued to another client")
	}
	expF, _ := claims["exp"].(float64)
	if expF == 0 {
		return nil, time.Time{}, errors.New("introspection gave no exp")
	}
	exp := time.Unix(int64(expF), 0)
	if !time.Now().Before(exp) {
		return nil, time.Time{}, errors.New("token expired")
	}
	if _, ok := claims["sub"].(string); !ok {
		if cid, _ := claims["client_id"].(string); cid != "" {
			claims["sub"] = cid
		} else {
			return nil, time.Time{}, errors.New("introspection gave no sub")
		}
	}
	if _, ok := claims["iss"]; !ok {
		claims["iss"] = p.meta.Issuer
	}
	id := newIdentity(claims, o.RolesClaim, nil)
	id.Source = "introspection"
	return id, exp, nil
}

// tokeninfo checks an opaque token at a Google-style tokeninfo endpoint:
// the token's aud or azp must be this client, exp in the future.
func (o *OIDC) tokeninfo(ctx context.Context, p *provider, tok string) (*identity, time.Time, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.TokeninfoEndpoint,
		strings.NewReader(url.Values{"access_token": {tok}}.Encode()))
	if err != nil {
		return nil, time.Time{}, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := o.rt.httpClient.Do(req)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("%w: tokeninfo: %v", errIdPUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 500 {
		return nil, time.Time{}, fmt.Errorf("%w: tokeninfo status %d", errIdPUnavailable, resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, time.Time{}, fmt.Errorf("tokeninfo status %d", resp.StatusCode)
	}
	var info map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&info); err != nil {
		return nil, time.Time{}, fmt.Errorf("tokeninfo: %v", err)
	}
	aud, _ := info["aud"].(string)
	azp, _ := info["azp"].(string)
	if aud != o.rt.clientID && azp != o.rt.clientID {
		return nil, time.Time{}, errors.New("token issued to another client")
	}
	var exp time.Time
	switch e := info["exp"].(type) { // Google answers numbers as strings
	case string:
		n, _ := strconv.ParseInt(e, 10, 64)
		exp = time.Unix(n, 0)
	case float64:
		exp = time.Unix(int64(e), 0)
	}
	if !time.Now().Before(exp) {
		return nil, time.Time{}, errors.New("token expired or without exp")
	}
	if s, _ := info["sub"].(string); s == "" {
		return nil, time.Time{}, errors.New("tokeninfo gave no sub")
	}
	if _, ok := info["iss"]; !ok {
		info["iss"] = p.meta.Issuer
	}
	id := newIdentity(info, o.RolesClaim, nil)
	id.Source = "tokeninfo"
	return id, exp, nil
}

// isIDToken recognises an ID token presented as an access token by the
// claims only ID tokens carry (OpenID Connect Core 1.0 §2, §3.1.3.6,
// §3.3.2.11), or Keycloak's typ claim "ID".
func isIDToken(claims map[string]any) bool {
	for _, k := range []string{"nonce", "at_hash", "c_hash"} {
		if _, ok := claims[k]; ok {
			return true
		}
	}
	return claims["typ"] == "ID"
}

// checkTimes checks exp (required, in the future), nbf and iat (not in the
// future beyond maxClockSkew) and returns the expiry.
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
		if v, ok := claims[k].(float64); ok && now.Add(maxClockSkew).Before(time.Unix(int64(v), 0)) {
			return time.Time{}, fmt.Errorf("token %s is in the future", k)
		}
	}
	return exp, nil
}
