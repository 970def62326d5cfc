package jws

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/lestrrat-go/jwx/v2/jwa"
	jwxjws "github.com/lestrrat-go/jwx/v2/jws"
)

func sign(t *testing.T, alg jwa.SignatureAlgorithm, key any, header map[string]any, payload string) string {
	t.Helper()
	hb, _ := json.Marshal(header)
	input := b64.EncodeToString(hb) + "." + b64.EncodeToString([]byte(payload))
	s, err := jwxjws.NewSigner(alg)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := s.Sign([]byte(input), key)
	if err != nil {
		t.Fatal(err)
	}
	return input + "." + b64.EncodeToString(sig)
}

// respell sets the unused low bits of the last base64url character, which a
// lax decoder ignores (256-byte RSA signature: 342 characters, 4 spare bits).
func respell(s string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[last|1])
}

func unsigned(header map[string]any, payload, sig string) string {
	hb, _ := json.Marshal(header)
	return b64.EncodeToString(hb) + "." + b64.EncodeToString([]byte(payload)) + "." + sig
}

// TestVerify: the legitimate tokens of each key type verify; the RFC 8725
// attack classes on the signature and the serialization are refused with
// the error that says why.
func TestVerify(t *testing.T) {
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	otherRSA, _ := rsa.GenerateKey(rand.Reader, 2048)
	const payload = `{"sub":"alice"}`
	hs := func() string { // HS256 keyed with the RSA public key's DER
		der, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
		hb, _ := json.Marshal(map[string]any{"alg": "HS256", "kid": "k"})
		input := b64.EncodeToString(hb) + "." + b64.EncodeToString([]byte(payload))
		m := hmac.New(sha256.New, der)
		m.Write([]byte(input))
		return input + "." + b64.EncodeToString(m.Sum(nil))
	}()
	good := sign(t, jwa.RS256, rsaKey, map[string]any{"alg": "RS256", "kid": "k", "typ": "at+jwt"}, payload)
	parts := strings.Split(good, ".")
	tests := []struct {
		name    string
		token   string
		key     any
		wantErr error
		parse   bool // the error comes from Parse
	}{
		{"RS256", good, &rsaKey.PublicKey, nil, false},
		{"ES256", sign(t, jwa.ES256, ecKey, map[string]any{"alg": "ES256"}, payload), &ecKey.PublicKey, nil, false},
		{"EdDSA", sign(t, jwa.EdDSA, edKey, map[string]any{"alg": "EdDSA"}, payload), edKey.Public(), nil, false},
		{"PS256", sign(t, jwa.PS256, rsaKey, map[string]any{"alg": "PS256"}, payload), &rsaKey.PublicKey, nil, false},
		{"alg none, empty signature", unsigned(map[string]any{"alg": "none"}, payload, ""), &rsaKey.PublicKey, ErrAlgorithm, false},
		{"alg None", unsigned(map[string]any{"alg": "None"}, payload, ""), &rsaKey.PublicKey, ErrAlgorithm, false},
		{"HS256 keyed with the public key", hs, &rsaKey.PublicKey, ErrAlgorithm, false},
		{"signed by another key", sign(t, jwa.RS256, otherRSA, map[string]any{"alg": "RS256"}, payload), &rsaKey.PublicKey, ErrSignature, false},
		{"RS256 header, EC key", good, &ecKey.PublicKey, ErrSignature, false},
		{"payload swapped", parts[0] + "." + b64.EncodeToString([]byte(`{"sub":"admin"}`)) + "." + parts[2], &rsaKey.PublicKey, ErrSignature, false},
		{"header swapped to ES256", b64.EncodeToString([]byte(`{"alg":"ES256"}`)) + "." + parts[1] + "." + parts[2], &rsaKey.PublicKey, ErrSignature, false},
		{"signature stripped", parts[0] + "." + parts[1] + ".", &rsaKey.PublicKey, ErrSignature, false},
		{"signature not base64url", parts[0] + "." + parts[1] + ".!!", &rsaKey.PublicKey, ErrMalformed, false},
		{"two segments", parts[0] + "." + parts[1], &rsaKey.PublicKey, ErrMalformed, true},
		{"one segment", parts[0], &rsaKey.PublicKey, ErrMalformed, true},
		{"four segments", good + ".x", &rsaKey.PublicKey, ErrMalformed, true},
		{"header not base64url", "!!." + parts[1] + "." + parts[2], &rsaKey.PublicKey, ErrMalformed, true},
		{"header not JSON", b64.EncodeToString([]byte("alg")) + "." + parts[1] + "." + parts[2], &rsaKey.PublicKey, ErrMalformed, true},
		{"crit header", sign(t, jwa.RS256, rsaKey, map[string]any{"alg": "RS256", "crit": []string{"exp"}, "exp": 1}, payload), &rsaKey.PublicKey, ErrMalformed, true},
		{"JSON serialization", `{"payload":"x","signatures":[]}`, &rsaKey.PublicKey, ErrMalformed, true},
		{"empty", "", &rsaKey.PublicKey, ErrMalformed, true},
		{"respelled: a line break in the signature", parts[0] + "." + parts[1] + "." + parts[2][:10] + "\n" + parts[2][10:], &rsaKey.PublicKey, ErrMalformed, true},
		{"respelled: padding bits set in the signature", parts[0] + "." + parts[1] + "." + respell(parts[2]), &rsaKey.PublicKey, ErrMalformed, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok, err := Parse(tc.token)
			if tc.parse {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Parse: %v, want %v", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			got, err := tok.Verify(tc.key)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Verify: %v, want %v", err, tc.wantErr)
			}
			if err == nil && string(got) != payload {
				t.Fatalf("payload %q", got)
			}
			if err != nil && got != nil {
				t.Fatal("a payload came back with an error")
			}
		})
	}
}

// TestEmbedsKey: a header that names or carries its own key says so.
func TestEmbedsKey(t *testing.T) {
	for _, m := range []string{"jku", "jwk", "x5u", "x5c"} {
		tok, err := Parse(unsigned(map[string]any{"alg": "RS256", m: "https://attacker.example/k"}, "{}", "x"))
		if err != nil {
			t.Fatal(err)
		}
		if !tok.Header.EmbedsKey() {
			t.Errorf("%s: EmbedsKey false", m)
		}
	}
	tok, _ := Parse(unsigned(map[string]any{"alg": "RS256", "kid": "k"}, "{}", "x"))
	if tok.Header.EmbedsKey() {
		t.Error("a plain header embeds a key")
	}
}
