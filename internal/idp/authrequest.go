package idp

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"net/url"
	"strings"
)

// AuthRequest is an Authorization Code request with PKCE (OpenID Connect
// Core §3.1.2.1, RFC 7636).
type AuthRequest struct {
	State, Nonce, Verifier, RedirectURI string
	Scopes                              []string
	// Extra are further parameters (prompt, acr_values, ...); a caller
	// refuses the protocol's own names before they reach here.
	Extra map[string]string
}

// NewVerifier returns a PKCE code verifier: 32 random bytes, base64url
// (43 characters, RFC 7636 §4.1).
func NewVerifier() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// AuthURL is the URL the browser is sent to for a.
func (c *Client) AuthURL(a AuthRequest) string {
	q := url.Values{
		"response_type": {"code"},
		"client_id":     {c.cfg.ClientID},
		"redirect_uri":  {a.RedirectURI},
		"scope":         {strings.Join(a.Scopes, " ")},
		"state":         {a.State},
		"nonce":         {a.Nonce},
	}
	sum := sha256.Sum256([]byte(a.Verifier))
	q.Set("code_challenge", base64.RawURLEncoding.EncodeToString(sum[:]))
	q.Set("code_challenge_method", "S256")
	for k, v := range a.Extra {
		q.Set(k, v)
	}
	sep := "?"
	if strings.Contains(c.meta.AuthorizationEndpoint, "?") {
		sep = "&"
	}
	return c.meta.AuthorizationEndpoint + sep + q.Encode()
}
