package azatauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

func mustLocal(t testing.TB, priv any) *LocalSigner {
	t.Helper()
	s, err := NewLocalSigner(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestDERToRawECDSA(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for range 200 { // covers r or s with leading zero bytes / high bit set
		d := sha256.Sum256([]byte(time.Now().String()))
		der, err := ecdsa.SignASN1(rand.Reader, k, d[:])
		if err != nil {
			t.Fatal(err)
		}
		raw, err := derToRawECDSA(der, 32)
		if err != nil {
			t.Fatal(err)
		}
		if len(raw) != 64 {
			t.Fatalf("raw length %d", len(raw))
		}
		r, s := new(big.Int).SetBytes(raw[:32]), new(big.Int).SetBytes(raw[32:])
		if !ecdsa.Verify(&k.PublicKey, d[:], r, s) {
			t.Fatal("converted signature does not verify")
		}
	}
	bad := []struct {
		name string
		der  []byte
	}{
		{"empty", nil},
		{"lone tag", []byte{0x30}},
		{"SET, not SEQUENCE", []byte{0x31, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}},
		{"truncated s", []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x05, 0x01}},
		{"r too large", append([]byte{0x30, 0x26, 0x02, 0x21}, make([]byte, 0x21+2+1)...)},
		{"r negative", []byte{0x30, 0x06, 0x02, 0x01, 0x81, 0x02, 0x01, 0x01}},
		{"r zero", []byte{0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x01}},
		{"r with a needless leading zero", []byte{0x30, 0x07, 0x02, 0x02, 0x00, 0x01, 0x02, 0x01, 0x01}},
		{"s empty", []byte{0x30, 0x05, 0x02, 0x01, 0x01, 0x02, 0x00}},
		{"long-form length that fits the short form", []byte{0x30, 0x81, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}},
		{"trailing element", []byte{0x30, 0x09, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01}},
		{"trailing bytes", []byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x01, 0x00}},
	}
	for _, b := range bad {
		if _, err := derToRawECDSA(b.der, 32); err == nil {
			t.Errorf("%s: accepted malformed DER %x", b.name, b.der)
		}
	}
	// The smallest canonical signature is fine.
	if raw, err := derToRawECDSA([]byte{0x30, 0x06, 0x02, 0x01, 0x01, 0x02, 0x01, 0x7f}, 32); err != nil || raw[31] != 1 || raw[63] != 0x7f {
		t.Errorf("r=1 s=127: %x, %v", raw, err)
	}
}

func TestMintVerifyRoundTrip(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	rk, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, priv := range []any{ec, rk} {
		s := mustLocal(t, priv)
		pub, _ := s.PublicKey()
		now := time.Now()
		c := &Claims{Issuer: "https://proxy", Audience: audience{"https://proxy"}, Subject: "https://op#alice",
			IssuedAt: now.Unix(), Expiry: now.Add(time.Hour).Unix(), ID: "7"}
		tok, err := Mint(context.Background(), s, c)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Verify(tok, func(kid string) jwk.Key {
			if kid == pub.KeyID() {
				return pub
			}
			return nil
		}, Expectations{Issuer: "https://proxy", Audience: "https://proxy"})
		if err != nil {
			t.Fatalf("%T: %v", priv, err)
		}
		if got.Subject != c.Subject || got.ID != "7" {
			t.Fatalf("claims %+v", got)
		}
		// The token also verifies with jwx on its own (interoperability).
		if _, err := jws.Verify([]byte(tok), jws.WithKey(pub.Algorithm(), pub)); err != nil {
			t.Fatalf("jwx rejects our token: %v", err)
		}
	}
}

// TestVerifyAttacks covers the JWT attack classes of RFC 8725.
func TestVerifyAttacks(t *testing.T) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s := mustLocal(t, ec)
	pub, _ := s.PublicKey()
	otherKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	other := mustLocal(t, otherKey)
	keys := func(kid string) jwk.Key {
		if kid == pub.KeyID() {
			return pub
		}
		return nil
	}
	want := Expectations{Issuer: "https://proxy", Audience: "https://proxy"}
	now := time.Now()
	claims := func(mut func(*Claims)) *Claims {
		c := &Claims{Issuer: "https://proxy", Audience: audience{"https://proxy"}, Subject: "op#alice",
			IssuedAt: now.Unix(), Expiry: now.Add(time.Hour).Unix(), ID: "1"}
		if mut != nil {
			mut(c)
		}
		return c
	}
	mint := func(s Signer, c *Claims) string {
		tok, err := Mint(context.Background(), s, c)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	// forge builds header.payload.signature by hand.
	forge := func(h map[string]any, c *Claims, sig []byte) string {
		hb, _ := json.Marshal(h)
		cb, _ := json.Marshal(c)
		return b64.EncodeToString(hb) + "." + b64.EncodeToString(cb) + "." + b64.EncodeToString(sig)
	}
	hdr := func(alg, kid, typ string) map[string]any {
		return map[string]any{"alg": alg, "kid": kid, "typ": typ}
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&ec.PublicKey)
	hmacSig := func(secret []byte, h map[string]any, c *Claims) string {
		hb, _ := json.Marshal(h)
		cb, _ := json.Marshal(c)
		input := b64.EncodeToString(hb) + "." + b64.EncodeToString(cb)
		signer, _ := jws.NewSigner(jwa.HS256)
		sig, err := signer.Sign([]byte(input), secret)
		if err != nil {
			t.Fatal(err)
		}
		return input + "." + b64.EncodeToString(sig)
	}
	valid := mint(s, claims(nil))
	parts := strings.Split(valid, ".")

	tests := []struct {
		name  string
		token string
		err   error
	}{
		{"alg none", forge(hdr("none", pub.KeyID(), TokenType), claims(nil), nil), ErrAlgorithm},
		{"alg none without kid", forge(map[string]any{"alg": "none", "typ": TokenType}, claims(nil), nil), ErrUnknownKey},
		{"HS256 signed with our public key (PEM DER)", hmacSig(pubDER, hdr("HS256", pub.KeyID(), TokenType), claims(nil)), ErrAlgorithm},
		{"RS256 header on an EC key", forge(hdr("RS256", pub.KeyID(), TokenType), claims(nil), make([]byte, 256)), ErrAlgorithm},
		{"kid path traversal", forge(hdr("ES256", "../../../etc/passwd", TokenType), claims(nil), make([]byte, 64)), ErrUnknownKey},
		{"kid unknown", mint(other, claims(nil)), ErrUnknownKey},
		{"kid empty", forge(hdr("ES256", "", TokenType), claims(nil), make([]byte, 64)), ErrUnknownKey},
		{"ECDSA r=s=0", forge(hdr("ES256", pub.KeyID(), TokenType), claims(nil), make([]byte, 64)), ErrSignature},
		{"ECDSA signature of wrong size", forge(hdr("ES256", pub.KeyID(), TokenType), claims(nil), make([]byte, 70)), ErrSignature},
		{"signature by another key under our kid", func() string {
			p := strings.Split(mint(other, claims(nil)), ".")
			return parts[0] + "." + p[1] + "." + p[2]
		}(), ErrSignature},
		{"tampered payload", func() string {
			cb, _ := json.Marshal(claims(func(c *Claims) { c.Subject = "op#mallory" }))
			return parts[0] + "." + b64.EncodeToString(cb) + "." + parts[2]
		}(), ErrSignature},
		{"expired", mint(s, claims(func(c *Claims) { c.Expiry = now.Add(-time.Second).Unix() })), ErrExpired},
		{"nbf in the future", mint(s, claims(func(c *Claims) { c.NotBefore = now.Add(time.Hour).Unix() })), ErrNotYetValid},
		{"iat in the future", mint(s, claims(func(c *Claims) { c.IssuedAt = now.Add(time.Hour).Unix() })), ErrNotYetValid},
		{"wrong iss", mint(s, claims(func(c *Claims) { c.Issuer = "https://other-proxy" })), ErrIssuer},
		{"wrong aud", mint(s, claims(func(c *Claims) { c.Audience = audience{"https://other-proxy"} })), ErrAudience},
		{"missing jti", mint(s, claims(func(c *Claims) { c.ID = "" })), ErrMissingClaim},
		{"missing sub", mint(s, claims(func(c *Claims) { c.Subject = "" })), ErrMissingClaim},
		{"non-numeric jti", mint(s, claims(func(c *Claims) { c.ID = "x" })), ErrMalformed},
		{"ID token typ", forge(hdr("ES256", pub.KeyID(), "JWT"), claims(nil), make([]byte, 64)), ErrNotAZAT},
		{"no typ", forge(map[string]any{"alg": "ES256", "kid": pub.KeyID()}, claims(nil), make([]byte, 64)), ErrNotAZAT},
		{"embedded jwk header", forge(map[string]any{"alg": "ES256", "kid": pub.KeyID(), "typ": TokenType, "jwk": map[string]any{"kty": "EC"}}, claims(nil), make([]byte, 64)), ErrMalformed},
		{"jku header", forge(map[string]any{"alg": "ES256", "kid": pub.KeyID(), "typ": TokenType, "jku": "https://evil/jwks"}, claims(nil), make([]byte, 64)), ErrMalformed},
		{"1 MB token", strings.Repeat("a", 1<<20), ErrTooLarge},
		{"two parts", parts[0] + "." + parts[1], ErrMalformed},
		{"four parts", valid + ".x", ErrMalformed},
		{"bad base64 header", "!!!." + parts[1] + "." + parts[2], ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Verify(tt.token, keys, want)
			if err == nil {
				t.Fatal("accepted")
			}
			if tt.err != nil && !strings.Contains(err.Error(), tt.err.Error()) {
				t.Fatalf("err = %v, want %v", err, tt.err)
			}
		})
	}
	if _, err := Verify(valid, keys, want); err != nil {
		t.Fatalf("valid token rejected: %v", err)
	}
}

func FuzzVerify(f *testing.F) {
	ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s := mustLocal(f, ec)
	pub, _ := s.PublicKey()
	tok, _ := Mint(context.Background(), s, &Claims{Issuer: "i", Audience: audience{"i"}, Subject: "s",
		IssuedAt: time.Now().Unix(), Expiry: time.Now().Add(time.Hour).Unix(), ID: "1"})
	f.Add(tok)
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("...")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := Verify(in, func(string) jwk.Key { return pub }, Expectations{Issuer: "i", Audience: "i"})
		if err == nil && (c == nil || c.Subject == "") {
			t.Fatal("accepted without claims")
		}
	})
}
