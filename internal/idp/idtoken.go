package idp

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
)

// MaxClockSkew is the tolerance for iat in the future.
const MaxClockSkew = 5 * time.Minute

// IDTokenCheck lists what an ID token must satisfy beyond go-oidc's checks
// (signature with a pinned algorithm, iss, aud contains client_id, exp, nbf).
type IDTokenCheck struct {
	Nonce string // required value of the nonce claim; "" for refreshes
	// AccessToken, when set and the token carries at_hash, must match it.
	AccessToken string
	// PrevIss and PrevSub, when set (refresh), must equal the new token's.
	PrevIss, PrevSub string
}

// VerifyIDToken verifies raw and returns its claims
// (OpenID Connect Core 1.0 §3.1.3.7 and §12.2). Only for ID tokens received
// from the token endpoint (code exchange, refresh): an unknown kid in them
// always allows a JWKS refetch (fromTokenEndpoint), unlike in tokens an
// attacker can send.
func (cl *Client) VerifyIDToken(ctx context.Context, raw string, c IDTokenCheck) (map[string]any, error) {
	return verifyIDToken(ctx, cl.idTokens, raw, cl.cfg.ClientID, c)
}

func verifyIDToken(ctx context.Context, v *oidc.IDTokenVerifier, raw, clientID string, c IDTokenCheck) (map[string]any, error) {
	tok, err := v.Verify(fromTokenEndpoint(ctx), raw)
	if err != nil {
		return nil, err
	}
	var claims map[string]any
	if err := tok.Claims(&claims); err != nil {
		return nil, err
	}
	if tok.Subject == "" {
		return nil, errors.New("id token has no sub")
	}
	if _, ok := claims["iat"]; !ok || tok.IssuedAt.IsZero() {
		return nil, errors.New("id token has no iat")
	}
	if tok.IssuedAt.After(time.Now().Add(MaxClockSkew)) {
		return nil, errors.New("id token issued in the future")
	}
	// §3.1.3.7 (4, 5): with several audiences azp must be present; when
	// present it must be our client_id.
	azp, _ := claims["azp"].(string)
	if len(tok.Audience) > 1 && azp == "" {
		return nil, errors.New("id token has several audiences and no azp")
	}
	if azp != "" && azp != clientID {
		return nil, fmt.Errorf("id token azp %q is not this client", azp)
	}
	if c.Nonce != "" {
		if subtle.ConstantTimeCompare([]byte(tok.Nonce), []byte(c.Nonce)) != 1 {
			return nil, errors.New("id token nonce does not match")
		}
	}
	if c.AccessToken != "" && tok.AccessTokenHash != "" {
		if err := tok.VerifyAccessToken(c.AccessToken); err != nil {
			return nil, errors.New("id token at_hash does not match the access token")
		}
	}
	if c.PrevSub != "" && (tok.Subject != c.PrevSub || tok.Issuer != c.PrevIss) {
		return nil, errors.New("refreshed id token has a different iss or sub")
	}
	return claims, nil
}

// UnverifiedClaims decodes a JWT's payload without checking it. Used only on
// an access token received directly from the token endpoint, to read roles.
func UnverifiedClaims(jwt string) map[string]any {
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		return nil
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}

// AudienceMatches tells whether the aud claim (string or array) contains one
// of want.
func AudienceMatches(aud any, want []string) bool {
	switch t := aud.(type) {
	case string:
		return slices.Contains(want, t)
	case []any:
		for _, a := range t {
			if s, ok := a.(string); ok && slices.Contains(want, s) {
				return true
			}
		}
	}
	return false
}

// VerifyLogoutToken verifies a back-channel logout token's signature, iss,
// aud and times (go-oidc); the caller checks its events, sub/sid and jti.
func (cl *Client) VerifyLogoutToken(ctx context.Context, raw string) (*oidc.LogoutToken, error) {
	return cl.idTokens.VerifyLogout(ctx, raw)
}
