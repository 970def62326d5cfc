package caddyoidc_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// tokenAnswer asks <site>/auth/token with the headers and returns the
// status and the decoded JSON body.
func tokenAnswer(t *testing.T, c *http.Client, site string, hdr ...string) (int, map[string]any) {
	t.Helper()
	resp := get(t, c, site+"/auth/token", hdr...)
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("status %d, body not JSON: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, m
}

// TestTokenMintFromBearerRefused: by default /auth/token mints only for a
// browser session. A provider access token (what every upstream receives)
// is not exchanged for a long-lived AZAT, and a cross-site browser request
// is refused even with the victim's cookie.
func TestTokenMintFromBearerRefused(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	webAccess, _ := codeFlowTokens(t, op, testop.WebClientID, testop.WebClientSecret)

	// The access token works as a bearer token, but is not exchanged.
	if resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+webAccess); resp.StatusCode != 200 {
		t.Fatalf("bearer access token: %d", resp.StatusCode)
	}
	status, m := tokenAnswer(t, browser(), site.URL, "Authorization", "Bearer "+webAccess)
	if status != http.StatusForbidden || m["error"] != "access_denied" || m["token"] != nil {
		t.Fatalf("bearer exchanged: %d %v", status, m)
	}
	// Not even together with a session cookie.
	if status, m := tokenAnswer(t, c, site.URL, "Authorization", "Bearer "+webAccess); status != http.StatusForbidden || m["token"] != nil {
		t.Fatalf("bearer plus session: %d %v", status, m)
	}

	for _, tt := range []struct {
		name   string
		hdr    []string
		status int
	}{
		{"cross-site fetch", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"same-site fetch (a sibling subdomain)", []string{"Sec-Fetch-Site", "same-site"}, 403},
		{"cross-site navigation", []string{"Sec-Fetch-Site", "cross-site", "Sec-Fetch-Mode", "navigate"}, 403},
		{"foreign Origin without fetch metadata", []string{"Origin", "https://evil.example"}, 403},
		{"same-origin fetch", []string{"Sec-Fetch-Site", "same-origin"}, 200},
		{"typed into the address bar", []string{"Sec-Fetch-Site", "none"}, 200},
		{"curl (no fetch metadata)", nil, 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, c, site.URL+"/auth/token", tt.hdr...)
			b := body(t, resp)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, b)
			}
			if tt.status == 200 != strings.Contains(b, `"token":"ey`) {
				t.Fatalf("body %s", b)
			}
		})
	}
}

// TestTokenMintFromBearerOption: with mint_from_bearer, a provider access
// token is exchanged only when it was issued to this client (azp, else
// client_id): a token that merely names this API in its aud (another
// client's, a service account's) is refused.
func TestTokenMintFromBearerOption(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "mint_from_bearer", "azat"), up, "")
	login(t, browser(), op, site.URL, "/") // stores the user's grant
	webAccess, _ := codeFlowTokens(t, op, testop.WebClientID, testop.WebClientSecret)
	svc, err := op.ClientCredentialsToken(t.Context(), testop.AudienceScopePrefix+testop.WebClientID)
	if err != nil {
		t.Fatal(err)
	}
	with := func(k string, v any) func(map[string]any) { return func(c map[string]any) { c[k] = v } }
	tests := []struct {
		name   string
		token  string
		status int
	}{
		{"provider access token of this client (client_id web)", webAccess, 200},
		{"azp is this client", signed(t, op, accessClaims(op, func(c map[string]any) {
			delete(c, "client_id")
			c["azp"] = testop.WebClientID
		}), nil), 200},
		{"azp is another client", signed(t, op, accessClaims(op, with("azp", testop.OtherClientID)), nil), 403},
		{"client_id is another client", signed(t, op, accessClaims(op, with("client_id", testop.OtherClientID)), nil), 403},
		{"neither azp nor client_id", signed(t, op, accessClaims(op, func(c map[string]any) { delete(c, "client_id") }), nil), 403},
		{"service account token for this API", svc.AccessToken, 403},
		{"logout token", signed(t, op, accessClaims(op, with("events", map[string]any{
			"http://schemas.openid.net/event/backchannel-logout": map[string]any{}})), nil), 401},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, m := tokenAnswer(t, browser(), site.URL, "Authorization", "Bearer "+tt.token)
			if status != tt.status {
				t.Fatalf("status %d, want %d: %v", status, tt.status, m)
			}
			if tt.status != 200 {
				if m["error"] == nil || m["token"] != nil {
					t.Fatalf("body %v", m)
				}
				return
			}
			azat, _ := m["token"].(string)
			if resp := get(t, browser(), site.URL+"/files/a", "Authorization", "Bearer "+azat); resp.StatusCode != 200 {
				t.Fatalf("minted AZAT: %d", resp.StatusCode)
			}
		})
	}
}
