// Package jws is the project's one compact-JWS verifier (RFC 7515 compact
// serialization, asymmetric algorithms only). It splits a token, decodes its
// JOSE header and checks the signature with the key the caller chose from
// keys it trusts. Choosing the key (by kid) and checking the claims stay
// with the callers: internal/idp for provider tokens (keys from the
// provider's JWKS) and azatauth for AZATs (keys this proxy holds).
//
// Nothing here trusts the token's header for its key (jku, jwk, x5u, x5c
// are decoded only so that callers may refuse them), and an algorithm is
// accepted only when the caller allows it and it is asymmetric (RFC 8725
// §3.1, §3.2: no "none", no HMAC keyed with a public key).
package jws

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/lestrrat-go/jwx/v2/jwa"
	jwxjws "github.com/lestrrat-go/jwx/v2/jws"
)

var (
	// ErrMalformed: not a compact JWS (three base64url parts, a JSON
	// header, no crit).
	ErrMalformed = errors.New("malformed jws")
	// ErrAlgorithm: the header's alg is not an allowed asymmetric one.
	ErrAlgorithm = errors.New("signature algorithm not allowed")
	// ErrSignature: the signature does not verify with the key.
	ErrSignature = errors.New("bad signature")
)

// Asymmetric are the only algorithms ever accepted.
var Asymmetric = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true,
}

// Header is the part of a JOSE header the project reads.
type Header struct {
	Alg  string `json:"alg"`
	Kid  string `json:"kid"`
	Typ  string `json:"typ"`
	Crit any    `json:"crit,omitempty"`
	// Members that would let a token pick its own key: never used;
	// EmbedsKey tells a caller that refuses them.
	Jku any `json:"jku,omitempty"`
	Jwk any `json:"jwk,omitempty"`
	X5u any `json:"x5u,omitempty"`
	X5c any `json:"x5c,omitempty"`
}

// EmbedsKey tells whether the header names or carries a key.
func (h *Header) EmbedsKey() bool {
	return h.Jku != nil || h.Jwk != nil || h.X5u != nil || h.X5c != nil
}

// Token is a parsed, not yet verified, compact JWS.
type Token struct {
	Header     Header
	raw        string
	dot1, dot2 int
}

// b64 decodes strictly: one spelling per token (no padding bits set, no
// line breaks), so caches keyed by the token's hash cannot be sidestepped
// by respelling a token.
var b64 = base64.RawURLEncoding.Strict()

// Parse splits a compact JWS and decodes its header. A crit header is
// refused: no extension is understood.
func Parse(token string) (*Token, error) {
	if strings.ContainsAny(token, "\r\n") { // the decoder would skip them
		return nil, ErrMalformed
	}
	dot1 := strings.IndexByte(token, '.')
	if dot1 < 0 {
		return nil, ErrMalformed
	}
	dot2 := strings.IndexByte(token[dot1+1:], '.')
	if dot2 < 0 {
		return nil, ErrMalformed
	}
	dot2 += dot1 + 1
	if strings.IndexByte(token[dot2+1:], '.') >= 0 {
		return nil, ErrMalformed
	}
	hb, err := b64.DecodeString(token[:dot1])
	if err != nil {
		return nil, ErrMalformed
	}
	t := &Token{raw: token, dot1: dot1, dot2: dot2}
	if err := json.Unmarshal(hb, &t.Header); err != nil || t.Header.Crit != nil {
		return nil, ErrMalformed
	}
	return t, nil
}

// Verify checks the signature with key (a public key of the header's alg,
// which must be asymmetric) and returns the payload.
func (t *Token) Verify(key any) ([]byte, error) {
	if !Asymmetric[t.Header.Alg] {
		return nil, ErrAlgorithm
	}
	sig, err := b64.DecodeString(t.raw[t.dot2+1:])
	if err != nil {
		return nil, ErrMalformed
	}
	v, err := jwxjws.NewVerifier(jwa.SignatureAlgorithm(t.Header.Alg))
	if err != nil {
		return nil, ErrAlgorithm
	}
	if err := v.Verify([]byte(t.raw[:t.dot2]), sig, key); err != nil {
		return nil, ErrSignature
	}
	return t.payload()
}

// payload decodes the payload.
func (t *Token) payload() ([]byte, error) {
	p, err := b64.DecodeString(t.raw[t.dot1+1 : t.dot2])
	if err != nil {
		return nil, ErrMalformed
	}
	return p, nil
}
