package caddyoidc_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// codeFlowTokens gets tokens for a client straight from the OP (as a CLI would).
func codeFlowTokens(t *testing.T, op *testop.OP, clientID, secret string) (access, id string) {
	t.Helper()
	cfg := op.OAuth2Config(clientID, secret, "http://127.0.0.1:1/cb")
	cb, err := op.LoginAndGetCallback(context.Background(), cfg.AuthCodeURL("state-123456789012345"))
	if err != nil {
		t.Fatal(err)
	}
	code := strings.Split(strings.Split(cb, "code=")[1], "&")[0]
	tok, err := cfg.Exchange(context.Background(), code)
	if err != nil {
		t.Fatal(err)
	}
	idt, _ := tok.Extra("id_token").(string)
	return tok.AccessToken, idt
}

func TestBearerTokens(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	c := browser()
	ctx := context.Background()

	svc, err := op.ClientCredentialsToken(ctx, testop.AudienceScopePrefix+"web")
	if err != nil {
		t.Fatal(err)
	}
	otherAud, err := op.ClientCredentialsToken(ctx)
	if err != nil {
		t.Fatal(err)
	}
	webAccess, webID := codeFlowTokens(t, op, testop.WebClientID, testop.WebClientSecret)
	otherAccess, _ := codeFlowTokens(t, op, testop.OtherClientID, testop.OtherClientSecret)
	parts := strings.Split(webAccess, ".")
	noneAlg := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none"}`)) + "." + parts[1] + "."
	tampered := func() string {
		var claims map[string]any
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		_ = json.Unmarshal(b, &claims)
		claims["sub"] = "admin"
		nb, _ := json.Marshal(claims)
		return parts[0] + "." + base64.RawURLEncoding.EncodeToString(nb) + "." + parts[2]
	}()

	tests := []struct {
		name   string
		token  string
		status int
		sub    string
	}{
		{"service account (client credentials, aud web)", svc.AccessToken, 200, testop.ServiceClientID},
		{"user access token of this client (CLI)", webAccess, 200, testop.UserID},
		{"service token for another audience", otherAud.AccessToken, 401, ""},
		{"access token issued to another client", otherAccess, 401, ""},
		{"ID token presented as access token", webID, 401, ""},
		{"alg none", noneAlg, 401, ""},
		{"tampered payload", tampered, 401, ""},
		{"opaque without introspection", "opaque-token-value", 401, ""},
		{"10 KB garbage JWT", "eyJ" + strings.Repeat("a", 5<<10) + ".eyJ" + strings.Repeat("b", 5<<10) + ".c", 401, ""},
		{"1 MB token (refused by Caddy's header limit)", strings.Repeat("a", 1<<20), 431, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, c, site.URL+"/api", "Authorization", "Bearer "+tt.token)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body(t, resp))
			}
			if tt.status == 200 {
				h := up.header()
				if h.Get("X-Auth-Request-User") != tt.sub || h.Get("Authorization") != "Bearer "+tt.token {
					t.Fatalf("upstream user %q auth %.20q", h.Get("X-Auth-Request-User"), h.Get("Authorization"))
				}
			} else if tt.status == 401 && !strings.Contains(resp.Header.Get("WWW-Authenticate"), `error="invalid_token"`) {
				t.Fatalf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
			}
		})
	}

	t.Run("empty bearer token: no credentials", func(t *testing.T) {
		resp := get(t, c, site.URL+"/api", "Authorization", "Bearer ")
		if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Bearer realm="`+strings.TrimPrefix(site.URL, "http://")+`"` {
			t.Fatalf("%d %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	})

	t.Run("key rotation: new kid is fetched", func(t *testing.T) {
		if err := op.RotateSigningKey(); err != nil {
			t.Fatal(err)
		}
		tok, err := op.ClientCredentialsToken(ctx, testop.AudienceScopePrefix+"web")
		if err != nil {
			t.Fatal(err)
		}
		if resp := get(t, c, site.URL+"/api", "Authorization", "Bearer "+tok.AccessToken); resp.StatusCode != 200 {
			t.Fatalf("token signed with the rotated key: %d", resp.StatusCode)
		}
	})
}

func TestIntrospection(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenType: testop.AccessTokenOpaque})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "introspection"), up, "")
	c := browser()
	ctx := context.Background()
	svc, err := op.ClientCredentialsToken(ctx, testop.AudienceScopePrefix+"web")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Count(svc.AccessToken, ".") == 2 {
		t.Fatal("expected an opaque token")
	}
	before := op.Requests(testop.PathIntrospect)
	for range 3 {
		if resp := get(t, c, site.URL+"/api", "Authorization", "Bearer "+svc.AccessToken); resp.StatusCode != 200 {
			t.Fatalf("opaque token: %d %s", resp.StatusCode, body(t, resp))
		}
	}
	if up.header().Get("X-Auth-Request-User") != testop.ServiceClientID {
		t.Fatalf("user %q", up.header().Get("X-Auth-Request-User"))
	}
	if n := op.Requests(testop.PathIntrospect) - before; n != 1 {
		t.Fatalf("%d introspection calls for 3 requests, want 1 (cached)", n)
	}
	otherAccess, _ := codeFlowTokens(t, op, testop.OtherClientID, testop.OtherClientSecret)
	if resp := get(t, c, site.URL+"/api", "Authorization", "Bearer "+otherAccess); resp.StatusCode != 401 {
		t.Fatalf("opaque token of another client: %d", resp.StatusCode)
	}
	if resp := get(t, c, site.URL+"/api", "Authorization", "Bearer made-up"); resp.StatusCode != 401 {
		t.Fatalf("unknown opaque token: %d", resp.StatusCode)
	}
}

func TestRolesAndClaims(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	ctx := context.Background()
	svc, _ := op.ClientCredentialsToken(ctx, testop.AudienceScopePrefix+"web")
	tests := []struct {
		name  string
		rules []string
		user  int // expected status for the logged-in user (groups admin, users)
		svc   int // for the service account (no groups)
	}{
		{"role the user has", []string{"require_role admin"}, 200, 403},
		{"any of several roles", []string{"require_role ops users"}, 200, 403},
		{"role nobody has", []string{"require_role ops"}, 403, 403},
		{"two rules: both needed", []string{"require_role admin", "require_role ops"}, 403, 403},
		{"claim value", []string{"require_claim email_verified true"}, 200, 403},
		{"claim other value", []string{"require_claim email test@example.com"}, 403, 403},
		{"client_id claim for service accounts", []string{"require_claim client_id sid1"}, 403, 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			site := startCaddy(t, oidcBlock(op, tt.rules...), up, "")
			c := browser()
			resp := login(t, c, op, site.URL, "/")
			if resp.StatusCode != tt.user {
				t.Fatalf("user: %d, want %d", resp.StatusCode, tt.user)
			}
			resp = get(t, browser(), site.URL+"/", "Authorization", "Bearer "+svc.AccessToken)
			if resp.StatusCode != tt.svc {
				t.Fatalf("service account: %d, want %d", resp.StatusCode, tt.svc)
			}
		})
	}
}

func TestRolesClaimPath(t *testing.T) {
	op := startOP(t, testop.Options{GroupsClaim: "realm_access"})
	up := newUpstream(t)
	// realm_access is a flat array here; the nested form is covered by the
	// claim lookup unit tests.
	site := startCaddy(t, oidcBlock(op, "roles_claim realm_access", "pass_token id"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	h := up.header()
	if h.Get("X-Auth-Request-Groups") != "admin,users" {
		t.Fatalf("groups %q", h.Get("X-Auth-Request-Groups"))
	}
	// pass_token id sends the ID token (it has a nonce claim).
	p := strings.Split(strings.TrimPrefix(h.Get("Authorization"), "Bearer "), ".")
	b, _ := base64.RawURLEncoding.DecodeString(p[1])
	if !strings.Contains(string(b), `"nonce"`) {
		t.Fatal("pass_token id did not send the ID token")
	}
}

func TestAllowAnonymousAndPassTokenNone(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "allow_anonymous", "pass_token none"), up, "")
	resp := get(t, browser(), site.URL+"/public", "X-Auth-Request-User", "forged", "Authorization", "Basic Zm9vOmJhcg==")
	if resp.StatusCode != 200 {
		t.Fatalf("anonymous: %d", resp.StatusCode)
	}
	if h := up.header(); h.Get("X-Auth-Request-User") != "" || h.Get("Authorization") != "" {
		t.Fatalf("anonymous request carried identity: %v", h)
	}
	c := browser()
	login(t, c, op, site.URL, "/auth/login?back=/")
	if h := up.header(); h.Get("X-Auth-Request-User") != testop.UserID || h.Get("Authorization") != "" {
		t.Fatalf("pass_token none: user %q auth %q", h.Get("X-Auth-Request-User"), h.Get("Authorization"))
	}
}

func TestProviderDownAtStartup(t *testing.T) {
	port := freePort(t)
	issuer := "http://127.0.0.1:" + itoa(port)
	up := newUpstream(t)
	block := "oidc {\n\t\tissuer " + issuer + "\n\t\tclient_id web\n\t\tclient_secret web-secret\n\t}"
	site := startCaddy(t, block, up, "") // Caddy starts although nothing listens
	c := browser()
	resp := get(t, c, site.URL+"/api")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("provider down: %d", resp.StatusCode)
	}
	if resp := get(t, c, site.URL+"/", navigate...); resp.StatusCode != http.StatusServiceUnavailable ||
		!strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("browser while provider down: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	op := startOP(t, testop.Options{Addr: "127.0.0.1:" + itoa(port)})
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp := get(t, c, site.URL+"/", navigate...)
		if resp.StatusCode == http.StatusFound {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no recovery after the provider came up: %d", resp.StatusCode)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if resp := login(t, c, op, site.URL, "/"); resp.StatusCode != 200 {
		t.Fatalf("login after recovery: %d", resp.StatusCode)
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}
