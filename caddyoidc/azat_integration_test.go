package caddyoidc_test

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

type mintedToken struct {
	Token     string `json:"token"`
	TokenType string `json:"token_type"`
	ExpiresIn int64  `json:"expires_in"`
	ExpiresAt int64  `json:"expires_at"`
}

func mintAZAT(t *testing.T, c *http.Client, site string) mintedToken {
	t.Helper()
	resp := get(t, c, site+"/auth/token")
	if resp.StatusCode != 200 {
		t.Fatalf("mint: %d %s", resp.StatusCode, body(t, resp))
	}
	var m mintedToken
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	if m.TokenType != "Bearer" || m.ExpiresIn != 7*24*3600 || m.ExpiresAt < time.Now().Unix() {
		t.Fatalf("minted %+v", m)
	}
	return m
}

func TestAZATLifecycle(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "refresh_before 1s", "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	m := mintAZAT(t, c, site.URL)

	// The token is a JWS verifiable with the published JWKS.
	resp := get(t, browser(), site.URL+"/.well-known/jwks.json")
	if resp.StatusCode != 200 || resp.Header.Get("Cache-Control") == "" {
		t.Fatalf("jwks: %d", resp.StatusCode)
	}
	set, err := jwk.ParseReader(resp.Body)
	if err != nil || set.Len() != 1 {
		t.Fatalf("jwks: %v %d keys", err, set.Len())
	}
	if _, err := jws.Verify([]byte(m.Token), jws.WithKeySet(set, jws.WithRequireKid(true))); err != nil {
		t.Fatalf("AZAT does not verify with the published JWKS: %v", err)
	}
	hdr, _ := base64.RawURLEncoding.DecodeString(strings.Split(m.Token, ".")[0])
	if !strings.Contains(string(hdr), `"typ":"azat+jwt"`) || !strings.Contains(string(hdr), `"alg":"ES256"`) {
		t.Fatalf("header %s", hdr)
	}

	// curl with the AZAT after the provider's access token expired: one
	// refresh, and the upstream gets a fresh provider token, not the AZAT.
	cli := browser()
	time.Sleep(2500 * time.Millisecond)
	before := op.TokenCalls("refresh_token")
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", site.URL+"/files/a", nil)
			req.Header.Set("Authorization", "Bearer "+m.Token)
			resp, err := cli.Do(req)
			if err != nil || resp.StatusCode != 200 {
				t.Errorf("AZAT request: %v %v", err, resp)
				return
			}
			resp.Body.Close()
		}()
	}
	wg.Wait()
	if n := op.TokenCalls("refresh_token") - before; n != 1 {
		t.Fatalf("%d refreshes for 20 concurrent AZAT requests, want 1", n)
	}
	h := up.header()
	if h.Get("X-Auth-Request-User") != testop.UserID || h.Get("Authorization") == "Bearer "+m.Token ||
		!strings.HasPrefix(h.Get("Authorization"), "Bearer ey") {
		t.Fatalf("upstream user %q auth %.30q", h.Get("X-Auth-Request-User"), h.Get("Authorization"))
	}

	// The browser session shares the grant: it refreshes through it and
	// keeps working (no second refresh token was spent).
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("session after AZAT refresh: %d", resp.StatusCode)
	}

	// An AZAT cannot be exchanged for another.
	if resp := get(t, cli, site.URL+"/auth/token", "Authorization", "Bearer "+m.Token); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("AZAT exchange: %d", resp.StatusCode)
	}

	// Revoke: every AZAT stops working at once; a new one works.
	m2 := mintAZAT(t, c, site.URL)
	if resp := do(t, c, "POST", site.URL+"/auth/revoke", "Origin", "https://evil.example"); resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site revoke: %d", resp.StatusCode)
	}
	if resp := do(t, c, "POST", site.URL+"/auth/revoke"); resp.StatusCode != 200 {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}
	for _, tok := range []string{m.Token, m2.Token} {
		if resp := get(t, cli, site.URL+"/files/a", "Authorization", "Bearer "+tok); resp.StatusCode != 401 {
			t.Fatalf("revoked AZAT: %d", resp.StatusCode)
		}
	}
	m3 := mintAZAT(t, c, site.URL)
	if resp := get(t, cli, site.URL+"/files/a", "Authorization", "Bearer "+m3.Token); resp.StatusCode != 200 {
		t.Fatalf("AZAT minted after revoke: %d", resp.StatusCode)
	}

	// invalid_grant: the grant is dropped, AZATs answer 401.
	op.RevokeAllRefreshTokens()
	time.Sleep(2500 * time.Millisecond)
	if resp := get(t, cli, site.URL+"/files/a", "Authorization", "Bearer "+m3.Token); resp.StatusCode != 401 {
		t.Fatalf("AZAT after invalid_grant: %d", resp.StatusCode)
	}
}

func TestAZATProviderDownKeepsGrant(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "refresh_before 1s", "idp_timeout 2s", "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	m := mintAZAT(t, c, site.URL)
	time.Sleep(2500 * time.Millisecond)
	op.SetDown(true)
	resp := get(t, browser(), site.URL+"/files/a", "Authorization", "Bearer "+m.Token)
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("provider down: %d", resp.StatusCode)
	}
	op.SetDown(false)
	if resp := get(t, browser(), site.URL+"/files/a", "Authorization", "Bearer "+m.Token); resp.StatusCode != 200 {
		t.Fatalf("after recovery: %d", resp.StatusCode)
	}
}

func TestAZATWithoutGrant(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	id, secret := op.WebClient()
	noOffline := func(extra string) string {
		return "oidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + id + "\n\t\tclient_secret " + secret +
			"\n\t\tazat " + extra + "\n\t}"
	}
	site := startCaddy(t, noOffline(""), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	resp := get(t, c, site.URL+"/auth/token")
	var e map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&e)
	if resp.StatusCode != http.StatusConflict || e["error"] != "no_grant" || !strings.Contains(e["error_description"], "offline") {
		t.Fatalf("no grant: %d %v", resp.StatusCode, e)
	}

	site = startCaddy(t, noOffline("{\n\t\t\tfallback access_token\n\t\t}"), up, "")
	c = browser()
	login(t, c, op, site.URL, "/")
	resp = get(t, c, site.URL+"/auth/token")
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	if resp.StatusCode != 200 || !strings.HasPrefix(m["token"].(string), "ey") || strings.Contains(m["token"].(string), "azat") {
		t.Fatalf("fallback: %d %v", resp.StatusCode, m)
	}
}

func TestAZATAttacksThroughHandler(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	m := mintAZAT(t, c, site.URL)
	webAccess, webID := codeFlowTokens(t, op, testop.WebClientID, testop.WebClientSecret)
	p := strings.Split(m.Token, ".")
	enc := base64.RawURLEncoding.EncodeToString
	payload := func(mut func(map[string]any)) string {
		b, _ := base64.RawURLEncoding.DecodeString(p[1])
		var cl map[string]any
		_ = json.Unmarshal(b, &cl)
		mut(cl)
		nb, _ := json.Marshal(cl)
		return enc(nb)
	}
	hdr := func(h string) string { return enc([]byte(h)) }
	kid := func() string {
		b, _ := base64.RawURLEncoding.DecodeString(p[0])
		var h map[string]string
		_ = json.Unmarshal(b, &h)
		return h["kid"]
	}()
	tests := []struct{ name, token string }{
		{"alg none", hdr(`{"alg":"none","typ":"azat+jwt","kid":"`+kid+`"}`) + "." + p[1] + "."},
		{"HS256", hdr(`{"alg":"HS256","typ":"azat+jwt","kid":"`+kid+`"}`) + "." + p[1] + "." + enc(make([]byte, 32))},
		{"ECDSA r=s=0", p[0] + "." + p[1] + "." + enc(make([]byte, 64))},
		{"kid path traversal", hdr(`{"alg":"ES256","typ":"azat+jwt","kid":"../../../../etc/passwd"}`) + "." + p[1] + "." + p[2]},
		{"tampered sub", p[0] + "." + payload(func(c map[string]any) { c["sub"] = op.Issuer + "#id2" }) + "." + p[2]},
		{"ID token as AZAT", webID},
		{"access token with our iss", p[0] + "." + payload(func(c map[string]any) { c["typ"] = "x" }) + "." + strings.Split(webAccess, ".")[2]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, browser(), site.URL+"/files/a", "Authorization", "Bearer "+tt.token)
			if resp.StatusCode != 401 {
				t.Fatalf("status %d", resp.StatusCode)
			}
		})
	}
	// The provider's own access token still works as a bearer (not taken
	// for an AZAT), and an AZAT never goes upstream.
	if resp := get(t, browser(), site.URL+"/files/a", "Authorization", "Bearer "+webAccess); resp.StatusCode != 200 {
		t.Fatalf("provider access token: %d", resp.StatusCode)
	}
}

// TestAZATVerifyOnlySite: a second site that only verifies, with keys from
// the first site's JWKS (`trust`) and the grant store shared by storage.
func TestAZATVerifyOnlySite(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	id, secret := op.WebClient()
	pa, pb := freePort(t), freePort(t)
	a, b := "http://127.0.0.1:"+itoa(pa), "http://127.0.0.1:"+itoa(pb)
	block := func(azat string) string {
		return "oidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + id + "\n\t\tclient_secret " + secret +
			"\n\t\tscopes openid profile email offline_access\n\t\tnamespace files\n\t\tazat " + azat + "\n\t}\n\treverse_proxy " +
			strings.TrimPrefix(up.URL, "http://")
	}
	cf := "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system " + t.TempDir() + "\n}\n" +
		a + " {\n\t" + block("") + "\n}\n" +
		b + " {\n\t" + block("{\n\t\t\tverify_only\n\t\t\ttrust "+a+"/.well-known/jwks.json\n\t\t\tissuer "+a+"\n\t\t}") + "\n}\n"
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatalf("%v\n%s", err, cf)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })

	c := browser()
	login(t, c, op, a, "/")
	m := mintAZAT(t, c, a)
	if resp := get(t, browser(), b+"/files/x", "Authorization", "Bearer "+m.Token); resp.StatusCode != 200 {
		t.Fatalf("verify-only site: %d %s", resp.StatusCode, body(t, resp))
	}
	if up.header().Get("X-Auth-Request-User") != testop.UserID {
		t.Fatal("no identity upstream")
	}
	// It does not mint, and a revocation at A applies at B.
	if resp := get(t, c, b+"/auth/token", "Authorization", "Bearer "+m.Token); resp.StatusCode != http.StatusBadRequest && resp.StatusCode != http.StatusNotFound {
		t.Fatalf("verify-only site minted: %d", resp.StatusCode)
	}
	if resp := do(t, c, "POST", a+"/auth/revoke"); resp.StatusCode != 200 {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}
	// The other site sees the revocation once its grant cache (1 s) expires.
	deadline := time.Now().Add(3 * time.Second)
	for {
		resp := get(t, browser(), b+"/files/x", "Authorization", "Bearer "+m.Token)
		if resp.StatusCode == 401 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("revoked token still accepted at the verify-only site: %d", resp.StatusCode)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
