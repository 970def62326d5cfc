package caddyoidc_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

func startOP(t *testing.T, opts testop.Options) *testop.OP {
	t.Helper()
	op, err := testop.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Close() })
	return op
}

// oidcBlock is an oidc directive for op's web client with extra lines.
func oidcBlock(op *testop.OP, extra ...string) string {
	id, secret := op.WebClient()
	return "oidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + id + "\n\t\tclient_secret " + secret +
		"\n\t\tscopes openid profile email offline_access\n\t\t" + strings.Join(extra, "\n\t\t") + "\n\t}"
}

// login drives a browser-like client through the whole code flow starting at
// path, and returns the response of the final redirect target.
func login(t *testing.T, c *http.Client, op *testop.OP, site, path string) *http.Response {
	t.Helper()
	var loginURL *url.URL
	if strings.HasPrefix(path, "/auth/login") {
		loginURL, _ = url.Parse(site + path)
	} else {
		resp := get(t, c, site+path, navigate...)
		if resp.StatusCode != http.StatusFound {
			t.Fatalf("unauthenticated navigation: status %d, want 302", resp.StatusCode)
		}
		loginURL, _ = resp.Location()
	}
	if !strings.HasPrefix(loginURL.Path, "/auth/login") {
		t.Fatalf("redirected to %s, want /auth/login", loginURL)
	}
	cb, err := op.Login(context.Background(), c, loginURL.String(), testop.Username, testop.Password)
	if err != nil {
		t.Fatalf("login at the OP: %v", err)
	}
	resp := get(t, c, cb, navigate...)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("callback: status %d: %s", resp.StatusCode, body(t, resp))
	}
	back, _ := resp.Location()
	return get(t, c, site+back.RequestURI(), navigate...)
}

func TestCodeFlowEndToEnd(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "claim_header X-User-Name name"), up, "")
	c := browser()

	resp := login(t, c, op, site.URL, "/app/page?x=1")
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("after login: %d %s", resp.StatusCode, body(t, resp))
	}
	var got map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&got)
	if got["path"] != "/app/page?x=1" {
		t.Fatalf("back to %q, want /app/page?x=1", got["path"])
	}
	h := up.header()
	checks := map[string]string{
		"X-Auth-Request-User":               "id1",
		"X-Auth-Request-Email":              "test-user@zitadel.ch",
		"X-Auth-Request-Preferred-Username": "test-user@localhost",
		"X-Auth-Request-Groups":             "admin,users",
		"X-User-Name":                       "Test User",
	}
	for k, want := range checks {
		if h.Get(k) != want {
			t.Errorf("upstream %s = %q, want %q", k, h.Get(k), want)
		}
	}
	if a := h.Get("Authorization"); !strings.HasPrefix(a, "Bearer ey") {
		t.Errorf("upstream Authorization = %q, want the access token", a)
	}
	if strings.Contains(h.Get("Cookie"), "caddy_oidc") {
		t.Error("session cookie leaked upstream")
	}

	// Session cookie attributes.
	u, _ := url.Parse(site.URL)
	for _, ck := range c.Jar.Cookies(u) {
		if strings.HasPrefix(ck.Name, "caddy_oidc_flow") {
			t.Errorf("flow cookie %s left behind", ck.Name)
		}
	}

	// Client-sent identity headers are replaced, not trusted.
	resp = get(t, c, site.URL+"/api", "X-Auth-Request-User", "admin", "X-User-Name", "Mallory", "Accept", "application/json")
	if resp.StatusCode != 200 || up.header().Get("X-Auth-Request-User") != "id1" || up.header().Get("X-User-Name") != "Test User" {
		t.Fatalf("forged headers: status %d, user %q", resp.StatusCode, up.header().Get("X-Auth-Request-User"))
	}

	// userinfo route
	resp = get(t, c, site.URL+"/auth/userinfo")
	var ui map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&ui)
	if resp.StatusCode != 200 || ui["sub"] != "id1" || ui["email"] != "test-user@zitadel.ch" || ui["source"] != "session" {
		t.Fatalf("userinfo %d %v", resp.StatusCode, ui)
	}
}

func TestSessionCookieAttributes(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	c := browser()
	resp := get(t, c, site.URL+"/", navigate...)
	loginURL, _ := resp.Location()
	resp = get(t, c, site.URL+loginURL.RequestURI(), navigate...)
	for _, ck := range resp.Cookies() {
		if !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/auth" || ck.MaxAge != 300 {
			t.Errorf("flow cookie attributes: %+v", ck)
		}
	}
	authz, _ := resp.Location()
	q := authz.Query()
	if q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 || q.Get("nonce") == "" || len(q.Get("state")) < 32 {
		t.Fatalf("authorization request lacks PKCE/nonce/state: %s", authz.RawQuery)
	}
	cb, err := op.Login(context.Background(), c, authz.String(), testop.Username, testop.Password)
	if err != nil {
		t.Fatal(err)
	}
	resp = get(t, c, cb, navigate...)
	var session int
	for _, ck := range resp.Cookies() {
		if strings.HasPrefix(ck.Name, "caddy_oidc_") && ck.MaxAge > 0 {
			session++
			if !ck.HttpOnly || ck.SameSite != http.SameSiteLaxMode || ck.Path != "/" || ck.Secure {
				t.Errorf("session cookie attributes: %+v", ck)
			}
			if len(ck.String()) > 4096 {
				t.Errorf("cookie over 4 KB")
			}
		}
	}
	if session == 0 {
		t.Fatal("no session cookie set")
	}
}

func TestUnauthenticatedResponses(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	c := browser()
	tests := []struct {
		name   string
		hdr    []string
		status int
	}{
		{"navigation", navigate, http.StatusFound},
		{"html without fetch metadata", []string{"Accept", "text/html"}, http.StatusFound},
		{"fetch", []string{"Accept", "text/html", "Sec-Fetch-Mode", "cors"}, http.StatusUnauthorized},
		{"api", []string{"Accept", "application/json"}, http.StatusUnauthorized},
		{"curl", nil, http.StatusUnauthorized},
		{"bad bearer", []string{"Authorization", "Bearer not-a-token"}, http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := get(t, c, site.URL+"/data?x=1", tt.hdr...)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status == http.StatusFound {
				if loc := resp.Header.Get("Location"); loc != "/auth/login?back=%2Fdata%3Fx%3D1" {
					t.Fatalf("Location %q", loc)
				}
				return
			}
			if !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), `Bearer realm="127.0.0.1:`) {
				t.Fatalf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
			}
			var e map[string]string
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil || e["error"] == "" || e["error_description"] == "" {
				t.Fatalf("body %v %v", e, err)
			}
		})
	}
	if up.count() != 0 {
		t.Fatal("unauthenticated request reached the upstream")
	}
}

func TestOpenRedirectPayloads(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	payloads := []string{"//evil.example", "/\\evil.example", "https://evil.example", "/%2F%2Fevil.example",
		"\\\\evil.example", "http:evil.example", "javascript:alert(1)", "/\t/evil.example", "%2F%2Fevil.example"}
	for _, p := range payloads {
		c := browser()
		resp := get(t, c, site.URL+"/auth/login?back="+url.QueryEscape(p), navigate...)
		authz, _ := resp.Location()
		cb, err := op.Login(context.Background(), c, authz.String(), testop.Username, testop.Password)
		if err != nil {
			t.Fatal(err)
		}
		resp = get(t, c, cb, navigate...)
		if loc := resp.Header.Get("Location"); loc != "/" {
			t.Errorf("back=%q redirected to %q", p, loc)
		}
	}
}

func TestCallbackRejections(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")

	begin := func(c *http.Client) string {
		resp := get(t, c, site.URL+"/auth/login?back=/", navigate...)
		authz, _ := resp.Location()
		cb, err := op.Login(context.Background(), c, authz.String(), testop.Username, testop.Password)
		if err != nil {
			t.Fatal(err)
		}
		return cb
	}
	t.Run("state mismatch", func(t *testing.T) {
		c := browser()
		cb, _ := url.Parse(begin(c))
		q := cb.Query()
		q.Set("state", strings.Repeat("A", 43))
		cb.RawQuery = q.Encode()
		if resp := get(t, c, cb.String(), navigate...); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("callback in another browser (login CSRF)", func(t *testing.T) {
		cb := begin(browser())
		if resp := get(t, browser(), cb, navigate...); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("reused code", func(t *testing.T) {
		c := browser()
		cb := begin(c)
		u, _ := url.Parse(site.URL)
		saved := c.Jar.Cookies(u) // the flow cookie, replayed by an attacker
		if resp := get(t, c, cb, navigate...); resp.StatusCode != http.StatusFound {
			t.Fatalf("first use: %d", resp.StatusCode)
		}
		replay := browser()
		replay.Jar.SetCookies(&url.URL{Scheme: "http", Host: u.Host, Path: "/auth"}, saved)
		if resp := get(t, replay, cb, navigate...); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("replayed callback: %d", resp.StatusCode)
		}
	})
	t.Run("provider error", func(t *testing.T) {
		c := browser()
		cb, _ := url.Parse(begin(c))
		q := cb.Query()
		q.Del("code")
		q.Set("error", "access_denied")
		cb.RawQuery = q.Encode()
		if resp := get(t, c, cb.String(), navigate...); resp.StatusCode != http.StatusForbidden {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("mix-up: iss of another provider", func(t *testing.T) {
		c := browser()
		cb, _ := url.Parse(begin(c))
		q := cb.Query()
		q.Set("iss", "https://evil.example")
		cb.RawQuery = q.Encode()
		if resp := get(t, c, cb.String(), navigate...); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("forged code", func(t *testing.T) {
		c := browser()
		cb, _ := url.Parse(begin(c))
		q := cb.Query()
		q.Set("code", "forged")
		cb.RawQuery = q.Encode()
		if resp := get(t, c, cb.String(), navigate...); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	t.Run("no state", func(t *testing.T) {
		if resp := get(t, browser(), site.URL+"/auth/callback?code=x", navigate...); resp.StatusCode != http.StatusBadRequest {
			t.Fatalf("status %d", resp.StatusCode)
		}
	})
	if up.count() != 0 {
		t.Fatal("a rejected login reached the upstream")
	}
}

func TestRefreshWithRotationAndStorm(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
			up := newUpstream(t)
			site := startCaddy(t, oidcBlock(op, "refresh_before 1s", "session "+mode), up, "")
			c := browser()
			if resp := login(t, c, op, site.URL, "/"); resp.StatusCode != 200 {
				t.Fatalf("login: %d", resp.StatusCode)
			}
			first := up.header().Get("Authorization")
			time.Sleep(2500 * time.Millisecond)

			// 50 concurrent requests with the same stale session: one refresh.
			before := op.TokenCalls("refresh_token")
			var wg sync.WaitGroup
			statuses := make(chan int, 50)
			for range 50 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					req, _ := http.NewRequest("GET", site.URL+"/api", nil)
					resp, err := c.Do(req)
					if err != nil {
						statuses <- 0
						return
					}
					resp.Body.Close()
					statuses <- resp.StatusCode
				}()
			}
			wg.Wait()
			close(statuses)
			for s := range statuses {
				if s != 200 {
					t.Fatalf("request during refresh storm: %d", s)
				}
			}
			if n := op.TokenCalls("refresh_token") - before; n != 1 {
				t.Fatalf("%d refresh calls for 50 concurrent requests, want 1", n)
			}
			second := up.header().Get("Authorization")
			if second == first {
				t.Fatal("upstream still gets the expired access token")
			}
			// The rotated refresh token keeps working on the next expiry.
			time.Sleep(2500 * time.Millisecond)
			if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 {
				t.Fatalf("second refresh: %d %s", resp.StatusCode, body(t, resp))
			}
			if n := op.TokenCalls("refresh_token") - before; n != 2 {
				t.Fatalf("%d refresh calls, want 2", n)
			}

			// POST /auth/refresh refreshes now and answers the tokens.
			resp := do(t, c, "POST", site.URL+"/auth/refresh")
			var r map[string]any
			_ = json.NewDecoder(resp.Body).Decode(&r)
			if resp.StatusCode != 200 || r["access_token"] == "" || r["id_token"] == "" || r["expires_at"] == nil {
				t.Fatalf("refresh route: %d %v", resp.StatusCode, r)
			}
			if resp := get(t, c, site.URL+"/auth/refresh"); resp.StatusCode != http.StatusMethodNotAllowed {
				t.Fatalf("GET refresh: %d", resp.StatusCode)
			}
		})
	}
}

func TestRefreshFailures(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "refresh_before 1s", "idp_timeout 2s"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	time.Sleep(2500 * time.Millisecond)

	// Provider down: 503 with Retry-After, the session is kept.
	op.SetDown(true)
	resp := get(t, c, site.URL+"/api")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("provider down: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	op.SetDown(false)
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("after the provider came back: %d", resp.StatusCode)
	}

	// invalid_grant: the session ends, the user must log in again.
	op.RevokeAllRefreshTokens()
	time.Sleep(2500 * time.Millisecond)
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after invalid_grant: %d", resp.StatusCode)
	}
	if resp := get(t, c, site.URL+"/page", navigate...); resp.StatusCode != http.StatusFound {
		t.Fatalf("navigation after invalid_grant: %d", resp.StatusCode)
	}
}

func TestLogout(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")

	// GET shows a page and does not end the session (a cross-site link).
	resp := get(t, c, site.URL+"/auth/logout", navigate...)
	if resp.StatusCode != 200 || !strings.Contains(body(t, resp), `method="post"`) {
		t.Fatalf("GET logout: %d", resp.StatusCode)
	}
	// A cross-site POST is refused.
	resp = do(t, c, "POST", site.URL+"/auth/logout", "Origin", "https://evil.example", "Sec-Fetch-Site", "cross-site")
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("cross-site logout: %d", resp.StatusCode)
	}
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("session ended by GET or cross-site POST: %d", resp.StatusCode)
	}
	before := op.Requests(testop.PathRevoke)
	resp = do(t, c, "POST", site.URL+"/auth/logout", "Origin", site.URL, "Sec-Fetch-Site", "same-origin")
	if resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	loc, _ := resp.Location()
	if !strings.HasPrefix(loc.String(), op.Issuer) || loc.Query().Get("id_token_hint") == "" ||
		loc.Query().Get("post_logout_redirect_uri") != site.URL+"/" {
		t.Fatalf("end session redirect %s", loc)
	}
	if op.Requests(testop.PathRevoke) != before+1 {
		t.Fatal("refresh token not revoked at the provider")
	}
	// Follow to the provider: it accepts the hint and comes back.
	resp = get(t, c, loc.String())
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), site.URL+"/") {
		t.Fatalf("end_session: %d %s", resp.StatusCode, resp.Header.Get("Location"))
	}
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after logout: %d", resp.StatusCode)
	}
}

func TestVerifyClientSecret(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	// Accepted secret: Caddy starts.
	site := startCaddy(t, oidcBlock(op, "verify_client_secret"), up, "")
	if resp := get(t, browser(), site.URL+"/", navigate...); resp.StatusCode != http.StatusFound {
		t.Fatalf("with a good secret: %d", resp.StatusCode)
	}
	// Wrong secret: loading the config fails, naming the client, not the secret.
	cf := `{
	admin off
	persist_config off
	auto_https off
	storage file_system ` + t.TempDir() + `
}
http://127.0.0.1:` + itoa(freePort(t)) + ` {
	oidc {
		issuer ` + op.Issuer + `
		client_id web
		client_secret not-the-secret-xyz
		verify_client_secret
	}
	respond ok
}`
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = caddy.Load(cfg, true)
	if err == nil {
		t.Fatal("config with a wrong client secret loaded")
	}
	if !strings.Contains(err.Error(), `client_id "web"`) || strings.Contains(err.Error(), "not-the-secret-xyz") {
		t.Fatalf("error %q should name the client and hide the secret", err)
	}
}
