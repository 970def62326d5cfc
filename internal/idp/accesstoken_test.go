package idp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// signTyped signs payload with key (header kid of the key, typ when not
// nil).
func signTyped(t *testing.T, key jwk.Key, alg jwa.SignatureAlgorithm, payload []byte, typ any) string {
	t.Helper()
	hdr := jws.NewHeaders()
	_ = hdr.Set(jws.KeyIDKey, key.KeyID())
	if typ != nil {
		_ = hdr.Set(jws.TypeKey, typ)
	}
	b, err := jws.Sign(payload, jws.WithKey(alg, key, jws.WithProtectedHeaders(hdr)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestVerifyAccessToken: JWTs presented as bearer access tokens by an
// attacker (RFC 8725 §2: algorithm confusion, substitution of another kind
// of token, cross-issuer and cross-audience use, replay past expiry, key
// confusion, malformed input) are refused, each for its own reason; the
// provider's access tokens are accepted.
func TestVerifyAccessToken(t *testing.T) {
	ti := newTestIssuer(t)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	attackerKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	good := ti.publish(t, rsaKey, "k1")
	goodEC := ti.publish(t, ecKey, "k2")
	withKid := func(priv any, kid string) jwk.Key {
		k, _ := jwk.FromRaw(priv)
		_ = k.Set(jwk.KeyIDKey, kid)
		return k
	}
	const iss, api, client = "https://op.example", "https://api.example", "web"
	cl := New(Config{Issuer: iss, ClientID: client},
		Metadata{Issuer: iss, JWKSURI: ti.srv.URL, IDTokenSigningAlgs: []string{"RS256", "ES256", "HS256", "none"}})
	now := time.Now()
	claims := func(mut func(map[string]any)) map[string]any {
		c := map[string]any{"iss": iss, "sub": "alice", "aud": api, "client_id": client,
			"exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "scope": "openid"}
		if mut != nil {
			mut(c)
		}
		return c
	}
	set := func(k string, v any) func(map[string]any) { return func(c map[string]any) { c[k] = v } }
	del := func(k string) func(map[string]any) { return func(c map[string]any) { delete(c, k) } }
	js := func(c map[string]any) []byte { b, _ := json.Marshal(c); return b }
	sign := func(mut func(map[string]any), typ any) string {
		return signTyped(t, good, jwa.RS256, js(claims(mut)), typ)
	}
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	logoutEvent := map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}

	api1 := AccessTokenCheck{Audiences: []string{api}, ClientID: client}
	atjwt := AccessTokenCheck{Audiences: []string{api}, ClientID: client, RequireTyp: "application/AT+JWT"}
	dexLike := AccessTokenCheck{Audiences: []string{client, api}, ClientID: client, AcceptIDShaped: true}
	tests := []struct {
		name  string
		token string
		check AccessTokenCheck
		want  string // "" when accepted, else a part of the error
	}{
		// The provider's access tokens.
		{"access token, no typ", sign(nil, nil), api1, ""},
		{"access token, typ JWT", sign(nil, "JWT"), api1, ""},
		{"access token, typ at+jwt (RFC 9068)", sign(nil, "at+jwt"), api1, ""},
		{"access token, aud array", sign(set("aud", []any{"other", api}), nil), api1, ""},
		{"access token, ES256 key", signTyped(t, goodEC, jwa.ES256, js(claims(nil)), nil), api1, ""},
		{"Keycloak access token (typ claim Bearer)", sign(set("typ", "Bearer"), nil), api1, ""},
		{"nbf and iat within the clock skew", sign(func(c map[string]any) {
			c["nbf"] = now.Add(MaxClockSkew - time.Minute).Unix()
			c["iat"] = c["nbf"]
		}, nil), api1, ""},

		// §2.1 alg none, §2.2 HMAC keyed with the provider's public key.
		{"alg none", rawJWT(map[string]any{"alg": "none", "kid": "k1"}, claims(nil), nil), api1, "algorithm not allowed"},
		{"alg none, no kid", rawJWT(map[string]any{"alg": "none"}, claims(nil), nil), api1, "algorithm not allowed"},
		{"alg None", rawJWT(map[string]any{"alg": "None", "kid": "k1"}, claims(nil), nil), api1, "algorithm not allowed"},
		{"HS256 keyed with the RSA public key (DER)", hs256(t, pubDER, map[string]any{"alg": "HS256", "kid": "k1"}, claims(nil)), api1, "algorithm not allowed"},
		{"HS256 keyed with the RSA public key (PEM)", hs256(t, pubPEM, map[string]any{"alg": "HS256", "kid": "k1", "typ": "at+jwt"}, claims(nil)), atjwt, "algorithm not allowed"},
		{"alg the provider does not use (PS256)", signTyped(t, good, jwa.PS256, js(claims(nil)), nil), api1, "algorithm not allowed"},

		// §2.7 substitution: other kinds of tokens the provider signs.
		{"typ logout+jwt", sign(nil, "logout+jwt"), api1, `typ "logout+jwt" marks a back-channel logout token`},
		{"typ application/Logout+JWT", sign(nil, "application/Logout+JWT"), api1, "back-channel logout token"},
		{"typ id_token+jwt", sign(nil, "id_token+jwt"), api1, "an ID token"},
		{"typ azat+jwt", sign(nil, " AZAT+JWT"), api1, "an AZAT"},
		{"typ secevent+jwt", sign(nil, "secevent+jwt"), api1, "security event token"},
		{"typ dpop+jwt", sign(nil, "dpop+jwt"), api1, "DPoP proof"},
		{"typ logout+jwt stripped from the signed header", func() string {
			p := strings.Split(sign(set("events", logoutEvent), "logout+jwt"), ".")
			h, _ := json.Marshal(map[string]any{"alg": "RS256", "kid": "k1"})
			return base64.RawURLEncoding.EncodeToString(h) + "." + p[1] + "." + p[2]
		}(), api1, "bad signature"},
		{"back-channel logout token (events claim, typ JWT)", sign(set("events", logoutEvent), "JWT"), api1, `"events" claim`},
		{"ID token (nonce)", sign(set("nonce", "n-1"), nil), api1, "carries nonce"},
		{"ID token (at_hash only)", sign(set("at_hash", "x"), nil), api1, "carries at_hash"},
		{"ID token (c_hash only)", sign(set("c_hash", "x"), nil), api1, "carries c_hash"},
		{"ID token with the API audience, nonce", sign(set("nonce", "n-1"), "JWT"), dexLike, "aud is not the client_id"},
		{"Keycloak ID token (typ claim ID)", sign(set("typ", "ID"), nil), api1, `claim typ "ID"`},
		{"Keycloak refresh token (typ claim Refresh)", sign(set("typ", "Refresh"), nil), api1, `claim typ "Refresh"`},
		{"Keycloak offline token", sign(set("typ", "Offline"), nil), dexLike, `claim typ "Offline"`},

		// require_typ at+jwt (RFC 9068 §4): only typed access tokens.
		{"require_typ: at+jwt", sign(nil, "at+jwt"), atjwt, ""},
		{"require_typ: application/at+JWT", sign(nil, "application/at+JWT"), atjwt, ""},
		{"require_typ: typ JWT", sign(nil, "JWT"), atjwt, "require_typ"},
		{"require_typ: no typ", sign(nil, nil), atjwt, "require_typ"},
		{"require_typ: typ logout+jwt", sign(nil, "logout+jwt"), atjwt, "back-channel logout token"},

		// bearer_id_token_shaped accept: dex's access tokens.
		{"ID-token-shaped, aud client_id, accepted", sign(func(c map[string]any) { c["aud"] = client; c["nonce"] = "n" }, nil), dexLike, ""},
		{"ID-token-shaped from another issuer", sign(func(c map[string]any) {
			c["aud"], c["nonce"], c["iss"] = client, "n", "https://evil.example"
		}, nil), dexLike, "not the provider"},
		{"ID-token-shaped logout token", sign(func(c map[string]any) {
			c["aud"], c["nonce"], c["events"] = client, "n", logoutEvent
		}, nil), dexLike, "events"},
		{"ID-token-shaped, typ logout+jwt", sign(func(c map[string]any) { c["aud"], c["nonce"] = client, "n" }, "logout+jwt"), dexLike, "logout"},

		// §2.6 cross-issuer, §2.3/3.9 cross-audience use.
		{"foreign iss", sign(set("iss", "https://evil.example"), nil), api1, `issued by "https://evil.example", not the provider`},
		{"iss with a trailing slash", sign(set("iss", iss+"/"), nil), api1, "not the provider"},
		{"no iss", sign(del("iss"), nil), api1, "not the provider"},
		{"iss not a string", sign(set("iss", []any{iss}), nil), api1, "not the provider"},
		{"no aud", sign(del("aud"), nil), api1, "is not this API"},
		{"foreign aud", sign(set("aud", "https://other-api.example"), nil), api1, "is not this API"},
		{"aud the client_id (an ID token for this client)", sign(set("aud", client), nil), api1, "is not this API"},
		{"aud a prefix of the API", sign(set("aud", "https://api.example.evil"), nil), api1, "is not this API"},
		{"aud not a string", sign(set("aud", 1), nil), api1, "is not this API"},

		// Replay past expiry, tokens from the future.
		{"expired", sign(set("exp", now.Add(-time.Second).Unix()), nil), api1, "token expired"},
		{"no exp", sign(del("exp"), nil), api1, "no exp"},
		{"exp a string", sign(set("exp", fmt.Sprint(now.Add(time.Hour).Unix())), nil), api1, "no exp"},
		{"nbf in the future", sign(set("nbf", now.Add(MaxClockSkew+time.Minute).Unix()), nil), api1, "nbf is in the future"},
		{"iat far in the future", sign(set("iat", now.Add(24*time.Hour).Unix()), nil), api1, "iat is in the future"},
		{"no sub", sign(del("sub"), nil), api1, "no sub"},
		{"empty sub", sign(set("sub", ""), nil), api1, "no sub"},

		// Key confusion: §3.1 a key pinned to its kid and algorithm family.
		{"attacker key under the provider's kid", signTyped(t, withKid(attackerKey, "k1"), jwa.RS256, js(claims(nil)), nil), api1, "bad signature"},
		{"RS256 under the kid of the provider's EC key", signTyped(t, withKid(attackerKey, "k2"), jwa.RS256, js(claims(nil)), nil), api1, "no matching key"},
		{"ES256 under the kid of the provider's RSA key", signTyped(t, withKid(ecKey, "k1"), jwa.ES256, js(claims(nil)), nil), api1, "no matching key"},
		{"unknown kid", signTyped(t, withKid(attackerKey, "nope"), jwa.RS256, js(claims(nil)), nil), api1, "no matching key"},
		{"tampered payload", func() string {
			p := strings.Split(sign(nil, nil), ".")
			return p[0] + "." + base64.RawURLEncoding.EncodeToString(js(claims(set("sub", "admin")))) + "." + p[2]
		}(), api1, "bad signature"},

		// Unsigned and malformed.
		{"RS256 without a signature", rawJWT(map[string]any{"alg": "RS256", "kid": "k1"}, claims(nil), nil), api1, "bad signature"},
		{"two segments", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0", api1, "malformed jws"},
		{"four segments", sign(nil, nil) + ".x", api1, "malformed jws"},
		{"garbage", "eyJ.eyJ.sig", api1, "malformed jws"},
		{"crit header", rawJWT(map[string]any{"alg": "RS256", "kid": "k1", "crit": []string{"exp"}}, claims(nil), nil), api1, "malformed jws"},
		{"signed payload not JSON", signTyped(t, good, jwa.RS256, []byte("alice"), nil), api1, "malformed jws"},
		{"signed payload a JSON array", signTyped(t, good, jwa.RS256, []byte(`["alice"]`), nil), api1, "malformed jws"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, exp, err := cl.VerifyAccessToken(context.Background(), tt.token, tt.check)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if got["sub"] != "alice" || exp.Unix() != int64(got["exp"].(float64)) {
					t.Fatalf("claims %v, exp %v", got, exp)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if got != nil || !exp.IsZero() {
				t.Fatalf("claims %v and exp %v with an error", got, exp)
			}
		})
	}

	// A typed token of another kind (an AZAT of another site) is refused by
	// its header before any key lookup: an unknown kid in it fetches nothing.
	t.Run("refused typ fetches no JWKS", func(t *testing.T) {
		fetches := func() int { ti.mu.Lock(); defer ti.mu.Unlock(); return ti.fetch }
		cl := New(Config{Issuer: iss}, Metadata{Issuer: iss, JWKSURI: ti.srv.URL, IDTokenSigningAlgs: []string{"RS256"}})
		before := fetches()
		tok := signTyped(t, withKid(attackerKey, "other-site"), jwa.RS256, js(claims(nil)), "azat+jwt")
		if _, _, err := cl.VerifyAccessToken(context.Background(), tok, api1); err == nil || !strings.Contains(err.Error(), "an AZAT") {
			t.Fatalf("err = %v", err)
		}
		if n := fetches() - before; n != 0 {
			t.Fatalf("%d JWKS fetches for a refused typ", n)
		}
	})

	// Bearer tokens come from anyone: a flood of forged kids makes at most
	// one JWKS fetch (no fromTokenEndpoint here).
	t.Run("unknown kid floods are rate limited", func(t *testing.T) {
		fetches := func() int { ti.mu.Lock(); defer ti.mu.Unlock(); return ti.fetch }
		cl := New(Config{Issuer: iss}, Metadata{Issuer: iss, JWKSURI: ti.srv.URL, IDTokenSigningAlgs: []string{"RS256"}})
		if _, _, err := cl.VerifyAccessToken(context.Background(), sign(nil, nil), api1); err != nil {
			t.Fatal(err)
		}
		before := fetches()
		for i := range 20 {
			tok := signTyped(t, withKid(attackerKey, fmt.Sprintf("flood-%d", i)), jwa.RS256, js(claims(nil)), nil)
			if _, _, err := cl.VerifyAccessToken(context.Background(), tok, api1); err == nil {
				t.Fatal("forged kid accepted")
			}
		}
		if n := fetches() - before; n > 1 {
			t.Fatalf("%d JWKS fetches for 20 forged kids", n)
		}
	})
}

// TestAccessTokenTimes: the boundaries of exp, nbf and iat, with a fixed
// clock: a token is refused at its exp second, and from a clock ahead of
// this one by more than MaxClockSkew.
func TestAccessTokenTimes(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	u := func(d time.Duration) float64 { return float64(now.Add(d).Unix()) }
	for _, tt := range []struct {
		claims map[string]any
		want   string
	}{
		{map[string]any{"exp": u(time.Second)}, ""},
		{map[string]any{"exp": u(0)}, "expired"},
		{map[string]any{"exp": u(-time.Hour)}, "expired"},
		{map[string]any{}, "no exp"},
		{map[string]any{"exp": u(time.Hour), "nbf": u(MaxClockSkew)}, ""},
		{map[string]any{"exp": u(time.Hour), "nbf": u(MaxClockSkew + time.Second)}, "nbf"},
		{map[string]any{"exp": u(time.Hour), "iat": u(MaxClockSkew)}, ""},
		{map[string]any{"exp": u(time.Hour), "iat": u(MaxClockSkew + time.Second)}, "iat"},
		{map[string]any{"exp": u(time.Hour), "iat": u(-time.Hour), "nbf": u(-time.Hour)}, ""},
	} {
		exp, err := checkTimes(tt.claims, now)
		if (err == nil) != (tt.want == "") || err != nil && !strings.Contains(err.Error(), tt.want) {
			t.Errorf("checkTimes(%v) = %v, want %q", tt.claims, err, tt.want)
		}
		if err == nil && exp.Unix() != int64(tt.claims["exp"].(float64)) {
			t.Errorf("checkTimes(%v) exp %v", tt.claims, exp)
		}
	}
}

// TestTokenKindRules: the header typ, the claims that mark other kinds of
// tokens, and the ID-token shape, each rule alone.
func TestTokenKindRules(t *testing.T) {
	for _, tt := range []struct {
		typ, require string
		ok           bool
	}{
		{"", "", true}, {"JWT", "", true}, {"at+jwt", "", true},
		{"logout+jwt", "", false}, {"application/logout+jwt", "", false}, {" Application/LOGOUT+JWT ", "", false},
		{"id_token+jwt", "", false}, {"azat+jwt", "", false}, {"secevent+jwt", "", false}, {"dpop+jwt", "", false},
		{"at+jwt", "at+jwt", true}, {"application/at+JWT", "at+jwt", true}, {"JWT", "at+jwt", false}, {"", "at+jwt", false},
		{"logout+jwt", "at+jwt", false},
	} {
		c := AccessTokenCheck{RequireTyp: NormalizeTyp(tt.require), ClientID: "web"}
		if err := c.checkTyp(tt.typ); (err == nil) != tt.ok {
			t.Errorf("checkTyp(%q, require %q) = %v", tt.typ, tt.require, err)
		}
	}
	loose := AccessTokenCheck{AcceptIDShaped: true, ClientID: "web"}
	for _, tt := range []struct {
		claims       map[string]any
		strict, lose string // "" when accepted, else a word of the error
	}{
		{map[string]any{"sub": "a"}, "", ""},
		{map[string]any{"nonce": "n", "aud": "web"}, "nonce", ""},
		{map[string]any{"at_hash": "h", "aud": []any{"api", "web"}}, "at_hash", ""},
		{map[string]any{"c_hash": "h", "aud": "api"}, "c_hash", "client_id"},
	} {
		for _, c := range []struct {
			c    AccessTokenCheck
			want string
		}{{AccessTokenCheck{ClientID: "web"}, tt.strict}, {loose, tt.lose}} {
			err := c.c.checkIDShape(tt.claims)
			if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
				t.Errorf("checkIDShape(%v, accept %v) = %v, want %q", tt.claims, c.c.AcceptIDShaped, err, c.want)
			}
		}
	}
	for _, claims := range []map[string]any{{"events": map[string]any{}}, {"typ": "Logout"}, {"typ": "refresh"}, {"typ": "ID"}, {"typ": "OFFLINE"}} {
		if checkMarkers(claims) == nil {
			t.Errorf("checkMarkers(%v) accepted", claims)
		}
	}
	if checkMarkers(map[string]any{"typ": "Bearer"}) != nil {
		t.Error("Keycloak access token refused")
	}
	for typ, ok := range map[string]bool{
		"at+jwt": true, "application/AT+JWT": true, "JWT": true,
		"": false, " ": false, "logout+jwt": false, "application/azat+jwt": false, "at+jwt\x00": false, "at+jwt\u00e9": false,
	} {
		if ValidRequireTyp(typ) != ok {
			t.Errorf("ValidRequireTyp(%q) = %v", typ, !ok)
		}
	}
}
