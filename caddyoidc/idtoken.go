package caddyoidc

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

// maxClockSkew is the tolerance for iat in the future.
const maxClockSkew = 5 * time.Minute

// idTokenCheck lists what an ID token must satisfy beyond go-oidc's checks
// (signature with a pinned algorithm, iss, aud contains client_id, exp, nbf).
type idTokenCheck struct {
	clientID string
	nonce    string // required value of the nonce claim; "" for refreshes
	// accessToken, when set and the token carries at_hash, must match it.
	accessToken string
	// prevIss and prevSub, when set (refresh), must equal the new token's.
	prevIss, prevSub string
}

// verifyIDToken verifies rawIDToken and returns its claims
// (OpenID Connect Core 1.0 §3.1.3.7 and §12.2). Only for ID tokens received
// from the token endpoint (code exchange, refresh): an unknown kid in them
// always allows a JWKS refetch (fromTokenEndpoint), unlike in tokens an
// attacker can send.
func verifyIDToken(ctx context.Context, v *oidc.IDTokenVerifier, raw string, c idTokenCheck) (map[string]any, error) {
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
	if tok.IssuedAt.After(time.Now().Add(maxClockSkew)) {
		return nil, errors.New("id token issued in the future")
	}
	// §3.1.3.7 (4, 5): with several audiences azp must be present; when
	// present it must be our client_id.
	azp, _ := claims["azp"].(string)
	if len(tok.Audience) > 1 && azp == "" {
		return nil, errors.New("id token has several audiences and no azp")
	}
	if azp != "" && azp != c.clientID {
		return nil, fmt.Errorf("id token azp %q is not this client", azp)
	}
	if c.nonce != "" {
		if subtle.ConstantTimeCompare([]byte(tok.Nonce), []byte(c.nonce)) != 1 {
			return nil, errors.New("id token nonce does not match")
		}
	}
	if c.accessToken != "" && tok.AccessTokenHash != "" {
		if err := tok.VerifyAccessToken(c.accessToken); err != nil {
			return nil, errors.New("id token at_hash does not match the access token")
		}
	}
	if c.prevSub != "" && (tok.Subject != c.prevSub || tok.Issuer != c.prevIss) {
		return nil, errors.New("refreshed id token has a different iss or sub")
	}
	return claims, nil
}

// unverifiedClaims decodes a JWT's payload without checking it. Used only on
// an access token received directly from the token endpoint, to read roles.
func unverifiedClaims(jwt string) map[string]any {
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

// audienceMatches tells whether the aud claim (string or array) contains one
// of want.
func audienceMatches(aud any, want []string) bool {
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
