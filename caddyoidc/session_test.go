package caddyoidc

import (
	"encoding/base64"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

func fakeJWT(claims map[string]any) string {
	h, _ := json.Marshal(map[string]any{"alg": "RS256", "kid": "k"})
	p, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc(h) + "." + enc(p) + "." + enc([]byte(strings.Repeat("s", 256)))
}

// TestSessionCompactEncoding: a session with an ID token is sealed without
// repeating the ID token's claims, and decodes to the same identity
// (claims, roles from the access token, userinfo claims); one whose
// identity the ID token cannot rebuild is sealed whole.
func TestSessionCompactEncoding(t *testing.T) {
	idClaims := map[string]any{"iss": "https://idp.example.com", "sub": "user-1", "aud": "web", "azp": "web",
		"exp": float64(1796000000), "iat": float64(1795990000), "nonce": "n0", "at_hash": "h",
		"email": "jane@example.com", "name": "Jane Doe", "preferred_username": "jane", "email_verified": true,
		"sid": "psid"}
	accessClaims := map[string]any{"groups": []any{"admin", "users"}}
	withUserinfo := func() map[string]any {
		c := map[string]any{}
		for k, v := range idClaims {
			c[k] = v
		}
		c["locale"] = "de" // from userinfo only
		return c
	}
	full := func(s *session) []byte {
		b, _ := json.Marshal(struct {
			*sessionFields
			Identity *identity `json:"id"`
		}{(*sessionFields)(s), s.Identity})
		return b
	}
	for _, tt := range []struct {
		name    string
		claims  map[string]any
		idToken string
		compact bool
	}{
		{"ID token and userinfo claims", withUserinfo(), fakeJWT(idClaims), true},
		{"no ID token", withUserinfo(), "", false},
		{"identity dropped a claim of the ID token", map[string]any{"iss": "https://idp.example.com", "sub": "user-1"}, fakeJWT(idClaims), false},
		{"a claim differs from the ID token's", func() map[string]any { c := withUserinfo(); c["name"] = "Other"; return c }(), fakeJWT(idClaims), true},
	} {
		s := &session{ID: "id", AccessToken: fakeJWT(accessClaims), IDToken: tt.idToken, Created: 1, CreatedMs: 1000,
			Identity: newIdentity(tt.claims, []string{"groups"}, accessClaims)}
		enc := encodeSession(s)
		got, err := decodeSession(enc)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		want := s.Identity
		if !reflect.DeepEqual(got.Identity.Claims, want.Claims) || !reflect.DeepEqual(got.Identity.Roles, want.Roles) ||
			got.Identity.Email != want.Email || got.Identity.Name != want.Name || got.Identity.ClientID != want.ClientID ||
			got.Identity.Subject != want.Subject || got.Identity.Issuer != want.Issuer {
			t.Errorf("%s: decoded identity %+v, want %+v", tt.name, got.Identity, want)
		}
		if compact := !strings.Contains(string(enc), `"id":{`); compact != tt.compact {
			t.Errorf("%s: compact %v, want %v", tt.name, compact, tt.compact)
		}
		if tt.compact {
			t.Logf("%s: %d bytes sealed compactly, %d whole", tt.name, len(enc), len(full(s)))
			if len(enc) >= len(full(s)) {
				t.Errorf("%s: compact encoding is not smaller", tt.name)
			}
		}
	}
	// A session an earlier version sealed (the whole identity) still decodes.
	s := &session{ID: "id", IDToken: fakeJWT(idClaims), Created: 1, Identity: newIdentity(withUserinfo(), []string{"groups"}, nil)}
	if got, err := decodeSession(full(s)); err != nil || got.Identity.Claims["locale"] != "de" {
		t.Fatalf("earlier encoding: %v %v", got, err)
	}
}
