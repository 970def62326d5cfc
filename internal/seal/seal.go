// Package seal encrypts and authenticates small values (cookies, stored
// sessions and grants) with AES-256-GCM, and keeps generated secrets in
// Caddy storage.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
)

// Sealer encrypts and authenticates small values (session cookies, flow
// cookies, stored sessions) with AES-256-GCM. Every value is bound to a
// purpose string (its "associated data"), so a value sealed as a flow cookie
// can never be opened as a session and vice versa.
type Sealer struct {
	aead cipher.AEAD
}

// ErrInvalid is returned for every failure to open a sealed value. It carries
// no detail on purpose: callers log "invalid cookie", never the value.
var ErrInvalid = errors.New("sealed value is invalid")

// New derives an AES-256 key from secret with HKDF-SHA256, so operators
// may give a secret of any length >= 32 bytes (a random passphrase, a base64
// string) and every purpose of the key (label) gets its own subkey.
func New(secret []byte, label string) (*Sealer, error) {
	if len(secret) < 32 {
		return nil, errors.New("secret must be at least 32 bytes")
	}
	key, err := hkdf.Key(sha256.New, secret, nil, "caddy-oidc "+label, 32)
	if err != nil {
		return nil, err
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &Sealer{aead: aead}, nil
}

// Seal returns base64url(nonce || ciphertext || tag).
func (s *Sealer) Seal(plaintext []byte, purpose string) string {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	out := s.aead.Seal(nonce, nonce, plaintext, []byte(purpose))
	return base64.RawURLEncoding.EncodeToString(out)
}

// Open reverses Seal. It fails for any tampered, truncated or foreign value.
func (s *Sealer) Open(value string, purpose string) ([]byte, error) {
	// Strict: one spelling per sealed value (no non-zero padding bits), so
	// a value is accepted exactly when it is what Seal wrote.
	raw, err := base64.RawURLEncoding.Strict().DecodeString(value)
	if err != nil {
		return nil, ErrInvalid
	}
	ns := s.aead.NonceSize()
	if len(raw) < ns+s.aead.Overhead() {
		return nil, ErrInvalid
	}
	pt, err := s.aead.Open(nil, raw[:ns], raw[ns:], []byte(purpose))
	if err != nil {
		return nil, ErrInvalid
	}
	return pt, nil
}

// RandomString returns n random bytes encoded with base64url.
func RandomString(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}
