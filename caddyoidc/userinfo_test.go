package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
	"go.uber.org/zap"
)

func testOIDC(t *testing.T) *OIDC {
	return &OIDC{Provider: Provider{RolesClaim: []string{"groups"}}, logger: zap.NewNop(),
		rt: &runtime{clientID: "client-1", httpClient: idp.NewHTTPClient(5 * time.Second)}}
}

func TestMergeUserinfo(t *testing.T) {
	var answer map[string]any
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer at" {
			w.WriteHeader(401)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	}))
	defer srv.Close()
	o := testOIDC(t)
	p := idp.New(idp.Config{ClientID: "client-1"}, idp.Metadata{UserinfoEndpoint: srv.URL})
	tok := "at"

	answer = map[string]any{"sub": "alice", "email": "a@example.com", "name": "from userinfo"}
	claims := map[string]any{"sub": "alice", "name": "from id token"}
	if err := o.mergeUserinfo(context.Background(), p, tok, claims); err != nil {
		t.Fatal(err)
	}
	if claims["email"] != "a@example.com" || claims["name"] != "from id token" {
		t.Fatalf("merged %v", claims)
	}
	answer = map[string]any{"sub": "mallory", "email": "m@example.com"}
	claims = map[string]any{"sub": "alice"}
	if err := o.mergeUserinfo(context.Background(), p, tok, claims); !errors.Is(err, errUserinfoSub) {
		t.Fatalf("userinfo of another subject: %v", err)
	}
	if claims["email"] != nil {
		t.Fatal("claims of another subject merged")
	}
}

func TestTokeninfo(t *testing.T) {
	var answer map[string]any
	status := 200
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		if r.Form.Get("access_token") == "" {
			w.WriteHeader(400)
			return
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(answer)
	}))
	defer srv.Close()
	o := testOIDC(t)
	o.TokeninfoEndpoint = srv.URL
	p := idp.New(idp.Config{ClientID: "client-1"}, idp.Metadata{Issuer: "https://accounts.google.com"})
	exp := time.Now().Add(time.Hour).Unix()
	tests := []struct {
		name   string
		answer map[string]any
		status int
		ok     bool
	}{
		{"google answer (numbers as strings)", map[string]any{"azp": "client-1", "aud": "client-1", "sub": "123", "exp": json.Number(itoa64(exp)).String(), "email": "a@gmail.com"}, 200, true},
		{"aud only", map[string]any{"aud": "client-1", "sub": "123", "exp": float64(exp)}, 200, true},
		{"another client", map[string]any{"azp": "other", "aud": "other", "sub": "123", "exp": itoa64(exp)}, 200, false},
		{"expired", map[string]any{"aud": "client-1", "sub": "123", "exp": itoa64(time.Now().Add(-time.Minute).Unix())}, 200, false},
		{"no sub", map[string]any{"aud": "client-1", "exp": itoa64(exp)}, 200, false},
		{"invalid token", map[string]any{"error": "invalid_token"}, 400, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			answer, status = tt.answer, tt.status
			id, _, err := o.tokeninfo(context.Background(), p, "ya29.token")
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v", err)
			}
			if tt.ok && (id.Subject != "123" || id.Issuer != "https://accounts.google.com") {
				t.Fatalf("identity %+v", id)
			}
		})
	}
	status = 503
	if _, _, err := o.tokeninfo(context.Background(), p, "ya29.token"); !errors.Is(err, errIdPUnavailable) {
		t.Fatalf("5xx: %v", err)
	}
}

func itoa64(n int64) string { b, _ := json.Marshal(n); return string(b) }
