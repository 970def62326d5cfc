package idp

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"strconv"
	"time"
)

// Token is a token endpoint's answer (RFC 6749 §5.1, OpenID Connect Core
// §3.1.3.3). Nothing in it is verified yet: the caller verifies IDToken
// with VerifyIDToken.
type Token struct {
	AccessToken  string
	TokenType    string
	RefreshToken string
	IDToken      string
	Expiry       time.Time // zero when the provider gave no expires_in
}

type tokenJSON struct {
	AccessToken  string      `json:"access_token"`
	TokenType    string      `json:"token_type"`
	RefreshToken string      `json:"refresh_token"`
	IDToken      string      `json:"id_token"`
	ExpiresIn    json.Number `json:"expires_in"` // some providers send a string
}

// Exchange redeems an authorization code with its PKCE verifier (RFC 6749
// §4.1.3, RFC 7636 §4.5).
func (c *Client) Exchange(ctx context.Context, code, redirect, verifier string) (*Token, error) {
	return c.token(ctx, url.Values{
		"grant_type": {"authorization_code"}, "code": {code},
		"redirect_uri": {redirect}, "code_verifier": {verifier},
	})
}

// Refresh spends a refresh token (RFC 6749 §6). An *OAuthError means the
// provider refused it; see RefreshTokenDead.
func (c *Client) Refresh(ctx context.Context, refreshToken string) (*Token, error) {
	return c.token(ctx, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refreshToken}})
}

func (c *Client) token(ctx context.Context, form url.Values) (*Token, error) {
	var tj tokenJSON
	if err := c.post(ctx, c.meta.TokenEndpoint, form, authClient, &tj); err != nil {
		return nil, err
	}
	if tj.AccessToken == "" {
		return nil, errors.New("the token response has no access_token")
	}
	t := &Token{AccessToken: tj.AccessToken, TokenType: tj.TokenType, RefreshToken: tj.RefreshToken, IDToken: tj.IDToken}
	if n, err := strconv.ParseInt(tj.ExpiresIn.String(), 10, 64); err == nil && n > 0 {
		t.Expiry = time.Now().Add(time.Duration(n) * time.Second)
	}
	return t, nil
}

// RefreshTokenDead tells whether a refresh failure means the refresh token
// will never work again, so that the session it backs ends: a definite
// refusal by the token endpoint. invalid_grant is the standard answer (RFC
// 6749 §5.2); dex answers invalid_request for a spent or unknown refresh
// token (only with 400). An outage, a 5xx, a 429, or a refusal of the client itself
// (invalid_client: a rotated client secret is fixed by the operator, and the
// user's token may work again) keeps the session.
func RefreshTokenDead(err error) bool {
	var oe *OAuthError
	if !errors.As(err, &oe) {
		return false
	}
	switch oe.Code {
	case "invalid_grant":
		return true
	case "invalid_request":
		return oe.Status == 400
	}
	return false
}

// Revoke revokes a token (RFC 7009); hint is "refresh_token" or
// "access_token". A revocation endpoint answers 200 even for an unknown
// token.
func (c *Client) Revoke(ctx context.Context, token, hint string) error {
	if c.meta.RevocationEndpoint == "" {
		return errors.New("the provider advertises no revocation endpoint")
	}
	return c.post(ctx, c.meta.RevocationEndpoint, url.Values{"token": {token}, "token_type_hint": {hint}}, authClient, nil)
}

// Introspect asks about a token (RFC 7662) at endpoint, or the provider's
// introspection endpoint when endpoint is "". It returns the answer's
// claims; the caller checks active, iss, aud and exp.
func (c *Client) Introspect(ctx context.Context, endpoint, token string) (map[string]any, error) {
	if endpoint == "" {
		endpoint = c.meta.IntrospectionEndpoint
	}
	if endpoint == "" {
		return nil, errors.New("the provider advertises no introspection endpoint")
	}
	var claims map[string]any
	err := c.post(ctx, endpoint, url.Values{"token": {token}, "token_type_hint": {"access_token"}}, authBasic, &claims)
	return claims, err
}

// Tokeninfo asks a Google-style tokeninfo endpoint about an access token.
func (c *Client) Tokeninfo(ctx context.Context, endpoint, token string) (map[string]any, error) {
	var info map[string]any
	err := c.post(ctx, endpoint, url.Values{"access_token": {token}}, authNone, &info)
	return info, err
}

// Userinfo fetches the claims the userinfo endpoint gives for an access
// token (OpenID Connect Core §5.3). The caller checks that sub is the ID
// token's.
func (c *Client) Userinfo(ctx context.Context, accessToken string) (map[string]any, error) {
	if c.meta.UserinfoEndpoint == "" {
		return nil, errors.New("the provider advertises no userinfo endpoint")
	}
	var claims map[string]any
	err := getJSON(ctx, c.cfg.HTTP, c.meta.UserinfoEndpoint, accessToken, &claims)
	return claims, err
}
