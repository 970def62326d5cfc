package caddyoidc_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// startCaddyLogged is startCaddy with the handler's logs (info and up) in a
// file; logs returns what has been written so far.
func startCaddyLogged(t *testing.T, oidcBlock string, up *upstream) (site string, logs func() string) {
	t.Helper()
	dir := t.TempDir()
	logFile := filepath.Join(dir, "caddy.log")
	site = "http://127.0.0.1:" + itoa(freePort(t))
	loadCaddyfile(t, `{
	admin off
	persist_config off
	auto_https off
	storage file_system `+filepath.Join(dir, "storage")+`
	log {
		output file `+logFile+`
		level INFO
	}
}
`+site+` {
	`+oidcBlock+`
	reverse_proxy `+strings.TrimPrefix(up.URL, "http://")+`
}`)
	return site, func() string {
		b, _ := os.ReadFile(logFile)
		return string(b)
	}
}

// accessClaims are the claims of an access token of the web client as the
// test OP issues them; mut changes them.
func accessClaims(op *testop.OP, mut func(map[string]any)) map[string]any {
	now := time.Now()
	c := map[string]any{"iss": op.Issuer, "sub": testop.UserID, "aud": []any{testop.WebClientID},
		"client_id": testop.WebClientID, "exp": now.Add(5 * time.Minute).Unix(), "iat": now.Unix(),
		"jti": "jti-" + itoa(int(now.UnixNano()%1e9))}
	if mut != nil {
		mut(c)
	}
	return c
}

// signed signs claims with the test OP's real key and typ (nil: "JWT").
func signed(t *testing.T, op *testop.OP, claims map[string]any, typ any) string {
	t.Helper()
	var hdr map[string]any
	if typ != nil {
		hdr = map[string]any{"typ": typ}
	}
	tok, err := op.SignJWT(claims, hdr)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestBearerTokenConfusion: JWTs the provider signs that are not access
// tokens (ID tokens, back-channel logout tokens, security event tokens,
// AZATs, Keycloak's typed tokens), presented as bearer access tokens, are
// refused with 401 and a log line naming what decided; an access token
// still works.
func TestBearerTokenConfusion(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site, logs := startCaddyLogged(t, oidcBlock(op), up)
	if l := logs(); !strings.Contains(l, "client_id as audience") || !strings.Contains(l, `"default_audience":true`) {
		t.Fatalf("no start-up warning about the default audience:\n%s", l)
	}
	logoutEvent := map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}
	with := func(k string, v any) func(map[string]any) { return func(c map[string]any) { c[k] = v } }
	tests := []struct {
		name   string
		token  string
		status int
		logged string // in the rejection's log line
	}{
		{"access token (typ JWT)", signed(t, op, accessClaims(op, nil), nil), 200, ""},
		{"access token typ at+jwt", signed(t, op, accessClaims(op, nil), "at+jwt"), 200, ""},
		{"access token, Keycloak typ Bearer", signed(t, op, accessClaims(op, with("typ", "Bearer")), nil), 200, ""},
		{"typ logout+jwt", signed(t, op, accessClaims(op, nil), "logout+jwt"), 401, `typ \"logout+jwt\"`},
		{"typ application/Logout+JWT", signed(t, op, accessClaims(op, nil), "application/Logout+JWT"), 401, `typ \"application/Logout+JWT\"`},
		{"typ id_token+jwt", signed(t, op, accessClaims(op, nil), "id_token+jwt"), 401, "an ID token"},
		{"typ azat+jwt", signed(t, op, accessClaims(op, nil), "AZAT+JWT"), 401, "an AZAT"},
		{"typ secevent+jwt", signed(t, op, accessClaims(op, nil), "application/secevent+jwt"), 401, "security event token"},
		{"back-channel logout token (events, typ JWT)", signed(t, op, accessClaims(op, func(c map[string]any) {
			c["events"] = logoutEvent
			c["sid"] = "s1"
		}), nil), 401, `\"events\" claim`},
		{"ID token with nonce", signed(t, op, accessClaims(op, with("nonce", "n-123")), nil), 401, `carries nonce`},
		{"ID token with at_hash only", signed(t, op, accessClaims(op, with("at_hash", "x")), nil), 401, `carries at_hash`},
		{"ID token with c_hash only", signed(t, op, accessClaims(op, with("c_hash", "x")), nil), 401, `carries c_hash`},
		{"Keycloak ID token (typ claim ID)", signed(t, op, accessClaims(op, with("typ", "ID")), nil), 401, `claim typ \"ID\"`},
		{"Keycloak refresh token (typ claim Refresh)", signed(t, op, accessClaims(op, with("typ", "Refresh")), nil), 401, `claim typ \"Refresh\"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, browser(), site+"/api", "Authorization", "Bearer "+tt.token)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body(t, resp))
			}
			if tt.status == 200 {
				if up.header().Get("X-Auth-Request-User") != testop.UserID {
					t.Fatalf("upstream user %q", up.header().Get("X-Auth-Request-User"))
				}
				return
			}
			if b := body(t, resp); !strings.Contains(b, `"error":"invalid_token"`) {
				t.Fatalf("body %s", b)
			}
			line := lastLine(logs(), "bearer token rejected")
			if !strings.Contains(line, tt.logged) {
				t.Fatalf("log line does not say %s: %s", tt.logged, line)
			}
			if strings.Contains(logs(), tt.token) {
				t.Fatal("the token is in the logs")
			}
		})
	}
}

// lastLine is the last line of logs containing s.
func lastLine(logs, s string) string {
	lines := strings.Split(logs, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.Contains(lines[i], s) {
			return lines[i]
		}
	}
	return ""
}

// TestBearerRequireTyp: with require_typ at+jwt (RFC 9068), only access
// tokens typed at+jwt are accepted; untyped ones and other types are not.
func TestBearerRequireTyp(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site, logs := startCaddyLogged(t, oidcBlock(op, "require_typ at+jwt"), up)
	for _, tt := range []struct {
		typ    any
		status int
	}{
		{"at+jwt", 200}, {"application/AT+JWT", 200}, {nil, 401}, {"JWT", 401}, {"logout+jwt", 401}, {"", 401},
	} {
		resp := get(t, browser(), site+"/api", "Authorization", "Bearer "+signed(t, op, accessClaims(op, nil), tt.typ))
		if resp.StatusCode != tt.status {
			t.Fatalf("typ %v: status %d, want %d", tt.typ, resp.StatusCode, tt.status)
		}
	}
	if !strings.Contains(lastLine(logs(), "bearer token rejected"), "require_typ") {
		t.Fatal("the log does not name require_typ")
	}
	// The test OP's own access tokens (typ JWT) are refused here.
	webAccess, _ := codeFlowTokens(t, op, testop.WebClientID, testop.WebClientSecret)
	if resp := get(t, browser(), site+"/api", "Authorization", "Bearer "+webAccess); resp.StatusCode != 401 {
		t.Fatalf("untyped provider token with require_typ: %d", resp.StatusCode)
	}
}

// TestBearerAPIAudience: with an API audience distinct from the client_id,
// an ID token without any ID-token marker (what providers return on
// refresh) is refused by its aud, and no start-up warning is given.
func TestBearerAPIAudience(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site, logs := startCaddyLogged(t, oidcBlock(op, "audience https://api.example"), up)
	refreshedIDToken := signed(t, op, accessClaims(op, func(c map[string]any) {
		c["azp"] = testop.WebClientID
		c["auth_time"] = time.Now().Unix()
	}), nil)
	apiToken := signed(t, op, accessClaims(op, func(c map[string]any) { c["aud"] = []any{"https://api.example"} }), nil)
	if resp := get(t, browser(), site+"/api", "Authorization", "Bearer "+refreshedIDToken); resp.StatusCode != 401 {
		t.Fatalf("marker-free ID token with aud client_id: %d", resp.StatusCode)
	}
	if !strings.Contains(lastLine(logs(), "bearer token rejected"), "audience") {
		t.Fatal("the log does not name the audience")
	}
	if resp := get(t, browser(), site+"/api", "Authorization", "Bearer "+apiToken); resp.StatusCode != 200 {
		t.Fatalf("access token for the API: %d", resp.StatusCode)
	}
	if strings.Contains(logs(), "client_id as audience") {
		t.Fatal("start-up warning with an API audience")
	}
}

// TestBearerIDTokenShapedAccept: dex builds access tokens like ID tokens
// (nonce, at_hash, aud = client_id, no typ). bearer_id_token_shaped accept
// takes them, but only with aud containing the client_id and from the
// provider; logout tokens and typed tokens stay refused.
func TestBearerIDTokenShapedAccept(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	dexLike := func(mut func(map[string]any)) map[string]any {
		return accessClaims(op, func(c map[string]any) {
			delete(c, "client_id")
			c["aud"] = testop.WebClientID
			c["nonce"] = "n-1"
			c["at_hash"] = "h"
			if mut != nil {
				mut(c)
			}
		})
	}
	t.Run("refused by default", func(t *testing.T) {
		site, _ := startCaddyLogged(t, oidcBlock(op), up)
		if resp := get(t, browser(), site+"/api", "Authorization", "Bearer "+signed(t, op, dexLike(nil), nil)); resp.StatusCode != 401 {
			t.Fatalf("dex-shaped token by default: %d", resp.StatusCode)
		}
	})
	site, logs := startCaddyLogged(t, oidcBlock(op, "audience web https://api.example", "bearer_id_token_shaped accept"), up)
	tests := []struct {
		name   string
		token  string
		status int
		logged string
	}{
		{"dex access token", signed(t, op, dexLike(nil), nil), 200, ""},
		{"ID-token-shaped for the API audience only", signed(t, op, dexLike(func(c map[string]any) { c["aud"] = "https://api.example" }), nil),
			401, "aud is not the client_id"},
		{"ID-token-shaped from another issuer", signed(t, op, dexLike(func(c map[string]any) { c["iss"] = "https://evil.example" }), nil),
			401, "not the provider"},
		{"logout token", signed(t, op, dexLike(func(c map[string]any) {
			c["events"] = map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}
		}), nil), 401, "events"},
		{"typ logout+jwt", signed(t, op, dexLike(nil), "logout+jwt"), 401, "logout+jwt"},
		{"Keycloak typ ID", signed(t, op, dexLike(func(c map[string]any) { c["typ"] = "ID" }), nil), 401, `typ \"ID\"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, browser(), site+"/api", "Authorization", "Bearer "+tt.token)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status != 200 && !strings.Contains(lastLine(logs(), "bearer token rejected"), tt.logged) {
				t.Fatalf("log line does not say %s: %s", tt.logged, lastLine(logs(), "bearer token rejected"))
			}
		})
	}
}
