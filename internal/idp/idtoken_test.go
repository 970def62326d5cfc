package idp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// testIssuer serves a JWKS whose keys the test controls.
type testIssuer struct {
	srv   *httptest.Server
	mu    sync.Mutex
	keys  []jwk.Key // public keys served
	fetch int
}

func newTestIssuer(t *testing.T) *testIssuer {
	ti := &testIssuer{}
	ti.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ti.mu.Lock()
		defer ti.mu.Unlock()
		ti.fetch++
		set := jwk.NewSet()
		for _, k := range ti.keys {
			_ = set.AddKey(k)
		}
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(ti.srv.Close)
	return ti
}

func (ti *testIssuer) publish(t *testing.T, priv any, kid string) jwk.Key {
	t.Helper()
	k, err := jwk.FromRaw(priv)
	if err != nil {
		t.Fatal(err)
	}
	_ = k.Set(jwk.KeyIDKey, kid)
	pub, _ := k.PublicKey()
	ti.mu.Lock()
	ti.keys = append(ti.keys, pub)
	ti.mu.Unlock()
	return k
}

func signJWT(t *testing.T, key jwk.Key, alg jwa.SignatureAlgorithm, claims map[string]any) string {
	t.Helper()
	payload, _ := json.Marshal(claims)
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, key.KeyID())
	b, err := jws.Sign(payload, jws.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rawJWT builds a JWT with any header, for attacks no library would sign.
func rawJWT(header, claims map[string]any, sig []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(c) + "." + enc(sig)
}

func hs256(t *testing.T, secret []byte, header, claims map[string]any) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	input := enc(h) + "." + enc(c)
	k, _ := jwk.FromRaw(secret)
	sig, err := jws.Sign([]byte(input), jws.WithKey(jwa.HS256, k))
	if err != nil {
		t.Fatal(err)
	}
	// jws.Sign over a compact input re-encodes it; take just its signature.
	parts := strings.Split(string(sig), ".")
	return input + "." + parts[2]
}

func TestVerifyIDToken(t *testing.T) {
	ti := newTestIssuer(t)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := ti.publish(t, rsaKey, "k1")
	forged, _ := jwk.FromRaw(other)
	_ = forged.Set(jwk.KeyIDKey, "k1") // same kid, wrong key
	const iss, client, nonce = "https://op.example", "client-1", "n-0S6_WzA2Mj"
	now := time.Now()
	claims := func(mut func(map[string]any)) map[string]any {
		c := map[string]any{"iss": iss, "sub": "alice", "aud": client, "exp": now.Add(time.Hour).Unix(),
			"iat": now.Unix(), "nonce": nonce}
		if mut != nil {
			mut(c)
		}
		return c
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	accessToken := "opaque-access-token"
	atHash := func(s string) string {
		h := sha256.Sum256([]byte(s))
		return base64.RawURLEncoding.EncodeToString(h[:16])
	}

	ks := NewKeySet(ti.srv.URL, http.DefaultClient)
	v := oidc.NewVerifier(iss, ks, &oidc.Config{ClientID: client, SupportedSigningAlgs: []string{"RS256", "ES256"}})
	check := IDTokenCheck{Nonce: nonce, AccessToken: accessToken}

	tests := []struct {
		name  string
		token string
		ok    bool
	}{
		{"valid", signJWT(t, good, jwa.RS256, claims(nil)), true},
		{"valid with at_hash", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["at_hash"] = atHash(accessToken) })), true},
		{"valid with azp", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["aud"] = []string{client, "x"}; c["azp"] = client })), true},
		{"bad signature", signJWT(t, forged, jwa.RS256, claims(nil)), false},
		{"tampered payload", func() string {
			p := strings.Split(signJWT(t, good, jwa.RS256, claims(nil)), ".")
			c, _ := json.Marshal(claims(func(c map[string]any) { c["sub"] = "mallory" }))
			return p[0] + "." + base64.RawURLEncoding.EncodeToString(c) + "." + p[2]
		}(), false},
		{"wrong iss", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["iss"] = "https://evil.example" })), false},
		{"wrong aud", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["aud"] = "other-client" })), false},
		{"missing aud", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { delete(c, "aud") })), false},
		{"several aud without azp", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["aud"] = []string{client, "x"} })), false},
		{"azp another client", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["azp"] = "x" })), false},
		{"missing sub", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { delete(c, "sub") })), false},
		{"missing iat", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { delete(c, "iat") })), false},
		{"iat in the future", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["iat"] = now.Add(time.Hour).Unix() })), false},
		{"expired", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["exp"] = now.Add(-time.Minute).Unix() })), false},
		{"missing exp", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { delete(c, "exp") })), false},
		{"nbf in the future", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["nbf"] = now.Add(time.Hour).Unix() })), false},
		{"nonce mismatch", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["nonce"] = "other" })), false},
		{"nonce missing", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { delete(c, "nonce") })), false},
		{"at_hash mismatch", signJWT(t, good, jwa.RS256, claims(func(c map[string]any) { c["at_hash"] = atHash("other") })), false},
		{"alg none", rawJWT(map[string]any{"alg": "none", "kid": "k1"}, claims(nil), nil), false},
		{"alg none no kid", rawJWT(map[string]any{"alg": "none"}, claims(nil), nil), false},
		{"HS256 with the RSA public key", hs256(t, pubDER, map[string]any{"alg": "HS256", "kid": "k1"}, claims(nil)), false},
		{"alg not advertised (PS256)", signJWT(t, good, jwa.PS256, claims(nil)), false},
		{"unknown kid", func() string {
			k, _ := jwk.FromRaw(other)
			_ = k.Set(jwk.KeyIDKey, "nope")
			return signJWT(t, k, jwa.RS256, claims(nil))
		}(), false},
		{"kid path traversal", func() string {
			k, _ := jwk.FromRaw(other)
			_ = k.Set(jwk.KeyIDKey, "../../../../dev/null")
			return signJWT(t, k, jwa.RS256, claims(nil))
		}(), false},
		{"not a jwt", "a.b", false},
		{"garbage", "eyJ.eyJ.sig", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := verifyIDToken(context.Background(), v, tt.token, client, check)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
		})
	}

	t.Run("refresh with changed sub", func(t *testing.T) {
		c := IDTokenCheck{PrevIss: iss, PrevSub: "bob"}
		if _, err := verifyIDToken(context.Background(), v, signJWT(t, good, jwa.RS256, claims(nil)), client, c); err == nil {
			t.Fatal("accepted a refreshed ID token for another subject")
		}
	})

	t.Run("key rotation: unknown kid refetches the JWKS", func(t *testing.T) {
		ks := NewKeySet(ti.srv.URL, http.DefaultClient)
		if _, err := ks.refresh(context.Background(), fetchInitial); err != nil {
			t.Fatal(err)
		}
		v := oidc.NewVerifier(iss, ks, &oidc.Config{ClientID: client, SupportedSigningAlgs: []string{"RS256", "ES256"}})
		ec, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		rotated := ti.publish(t, ec, "k2")
		if _, err := verifyIDToken(context.Background(), v, signJWT(t, rotated, jwa.ES256, claims(nil)), client, check); err != nil {
			t.Fatalf("rotated key not picked up: %v", err)
		}
	})

	t.Run("unknown kid floods are rate limited", func(t *testing.T) {
		ti.mu.Lock()
		before := ti.fetch
		ti.mu.Unlock()
		k, _ := jwk.FromRaw(other)
		for i := range 20 {
			_ = k.Set(jwk.KeyIDKey, "flood-"+string(rune('a'+i)))
			// Not from the token endpoint (a logout token, say): go-oidc
			// directly, without verifyIDToken's fromTokenEndpoint.
			_, _ = v.Verify(context.Background(), signJWT(t, k, jwa.RS256, claims(nil)))
		}
		ti.mu.Lock()
		defer ti.mu.Unlock()
		if ti.fetch-before > 1 {
			t.Fatalf("%d JWKS fetches for 20 forged kids", ti.fetch-before)
		}
	})
}
