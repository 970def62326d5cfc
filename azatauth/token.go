package azatauth

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/caddy-oidc/caddy-oidc/internal/jws"
)

// TokenType is the JOSE "typ" of every AZAT. Verification requires it, so an
// AZAT can never be taken for an ID token or a provider's access token, nor
// they for an AZAT (RFC 8725 §3.11).
const TokenType = "azat+jwt"

// MaxTokenSize bounds the size of a token given for verification.
const MaxTokenSize = 8 << 10

// clockSkew tolerates small clock differences between instances.
const clockSkew = 30 * time.Second

// Claims are an AZAT's claims.
type Claims struct {
	Issuer    string   `json:"iss"`
	Audience  audience `json:"aud"`
	Subject   string   `json:"sub"` // grant key: <idp-iss>#<idp-sub>
	IssuedAt  int64    `json:"iat"`
	NotBefore int64    `json:"nbf,omitempty"`
	Expiry    int64    `json:"exp"`
	ID        string   `json:"jti"` // decimal, per-user increasing counter
}

// JTI returns the numeric token id.
func (c *Claims) JTI() (uint64, error) { return strconv.ParseUint(c.ID, 10, 64) }

type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if json.Unmarshal(b, &s) == nil {
		*a = audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	*a = l
	return nil
}

func (a audience) MarshalJSON() ([]byte, error) {
	if len(a) == 1 {
		return json.Marshal(a[0])
	}
	return json.Marshal([]string(a))
}

var b64 = base64.RawURLEncoding

// Mint signs claims with s and returns the compact JWS.
func Mint(ctx context.Context, s Signer, c *Claims) (string, error) {
	pub, err := s.PublicKey()
	if err != nil {
		return "", err
	}
	h, _ := json.Marshal(jws.Header{Alg: pub.Algorithm().String(), Kid: pub.KeyID(), Typ: TokenType})
	p, err := json.Marshal(c)
	if err != nil {
		return "", err
	}
	input := b64.EncodeToString(h) + "." + b64.EncodeToString(p)
	sig, err := s.Sign(ctx, []byte(input))
	if err != nil {
		return "", err
	}
	return input + "." + b64.EncodeToString(sig), nil
}

// Expectations are what a token must satisfy besides its signature.
type Expectations struct {
	Issuer   string
	Audience string
	Now      time.Time
}

// Verification errors. They name the rule, never the token.
var (
	ErrMalformed    = errors.New("malformed token")
	ErrTooLarge     = errors.New("token too large")
	ErrNotAZAT      = errors.New("not an AZAT (typ)")
	ErrUnknownKey   = errors.New("unknown key id")
	ErrAlgorithm    = errors.New("algorithm not allowed for this key")
	ErrSignature    = errors.New("bad signature")
	ErrIssuer       = errors.New("wrong issuer")
	ErrAudience     = errors.New("wrong audience")
	ErrExpired      = errors.New("token expired")
	ErrNotYetValid  = errors.New("token not valid yet")
	ErrMissingClaim = errors.New("missing required claim")
)

// KeyLookup returns the verification key for kid, or nil.
type KeyLookup func(kid string) jwk.Key

// PeekIssuer returns the iss claim of a JWT without verifying anything, to
// route a bearer token to the right verifier. Never trust its result.
func PeekIssuer(token string) string {
	first := bytes.IndexByte([]byte(token), '.')
	if first < 0 || len(token) > MaxTokenSize {
		return ""
	}
	second := bytes.IndexByte([]byte(token[first+1:]), '.')
	if second < 0 {
		return ""
	}
	p, err := b64.DecodeString(token[first+1 : first+1+second])
	if err != nil {
		return ""
	}
	var c struct {
		Iss string `json:"iss"`
	}
	_ = json.Unmarshal(p, &c)
	return c.Iss
}

// Verify checks an AZAT offline: size, typ, a key known by kid, the
// algorithm pinned to that key (never the header's choice), the signature,
// then iss, aud, exp, nbf, iat, sub and jti. Revocation (the jti window) is
// checked against the grant by the caller.
func Verify(token string, keys KeyLookup, want Expectations) (*Claims, error) {
	if len(token) > MaxTokenSize {
		return nil, ErrTooLarge
	}
	t, err := jws.Parse(token)
	if err != nil {
		return nil, ErrMalformed
	}
	h := &t.Header
	if h.Typ != TokenType {
		return nil, ErrNotAZAT
	}
	if h.EmbedsKey() {
		return nil, ErrMalformed
	}
	key := keys(h.Kid)
	if key == nil {
		return nil, ErrUnknownKey
	}
	alg := key.Algorithm().String()
	if h.Alg != alg || !allowedAlgs[alg] {
		return nil, ErrAlgorithm
	}
	pb, err := t.Verify(key)
	switch {
	case errors.Is(err, jws.ErrSignature):
		return nil, ErrSignature
	case errors.Is(err, jws.ErrAlgorithm):
		return nil, ErrAlgorithm
	case err != nil:
		return nil, ErrMalformed
	}
	var c Claims
	if err := json.Unmarshal(pb, &c); err != nil {
		return nil, ErrMalformed
	}
	if err := c.check(want); err != nil {
		return nil, err
	}
	return &c, nil
}

// allowedAlgs are the algorithms an AZAT key may have.
var allowedAlgs = map[string]bool{"ES256": true, "RS256": true, "PS256": true}

func (c *Claims) check(want Expectations) error {
	now := want.Now
	if now.IsZero() {
		now = time.Now()
	}
	if c.Issuer != want.Issuer {
		return ErrIssuer
	}
	if !slices.Contains([]string(c.Audience), want.Audience) {
		return ErrAudience
	}
	if c.Subject == "" || c.ID == "" || c.IssuedAt == 0 || c.Expiry == 0 {
		return ErrMissingClaim
	}
	if _, err := c.JTI(); err != nil {
		return fmt.Errorf("%w: jti", ErrMalformed)
	}
	if now.Unix() >= c.Expiry {
		return ErrExpired
	}
	if c.NotBefore != 0 && now.Add(clockSkew).Unix() < c.NotBefore {
		return ErrNotYetValid
	}
	if now.Add(clockSkew).Unix() < c.IssuedAt {
		return ErrNotYetValid
	}
	return nil
}
