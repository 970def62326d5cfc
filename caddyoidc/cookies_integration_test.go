package caddyoidc_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// TestHostPrefixCookies: with Secure host-only cookies, the session chunks,
// the flow cookie and the expose_tokens cookies are __Host- cookies (Secure,
// no Domain, Path=/), so a sibling subdomain cannot toss in a cookie of the
// same name; a bare caddy_oidc_0 beside them is not read and not forwarded,
// while the application's own cookies are.
func TestHostPrefixCookies(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	// cookie_secure on: Secure over plain HTTP on the loopback address,
	// which browsers (and Go's cookie jar) treat as a secure origin.
	site := startCaddy(t, oidcBlock(op, "cookie_secure on", "expose_tokens"), up, "")
	c := browser()

	resp := get(t, c, site.URL+"/auth/login?back=/app", navigate...)
	checkHostCookies(t, resp, "login", "__Host-caddy_oidc_flow_")
	loc, _ := resp.Location()
	cb, err := op.Login(context.Background(), c, loc.String(), testop.Username, testop.Password)
	if err != nil {
		t.Fatal(err)
	}
	resp = get(t, c, cb, navigate...)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("callback: %d %s", resp.StatusCode, body(t, resp))
	}
	checkHostCookies(t, resp, "callback", "__Host-caddy_oidc_0", "__Host-caddy_oidc_access_token", "__Host-caddy_oidc_id_token", "__Host-caddy_oidc_flow_")

	// A cookie of the bare name (what a sibling subdomain can set) and an
	// application cookie sharing the prefix.
	u, _ := url.Parse(site.URL)
	c.Jar.SetCookies(u, []*http.Cookie{{Name: "caddy_oidc_0", Value: "tossed", Path: "/app"}, {Name: "caddy_oidc_prefs", Value: "compact", Path: "/"}})
	resp = get(t, c, site.URL+"/app", "Accept", "application/json")
	if resp.StatusCode != http.StatusOK || up.header().Get("X-Auth-Request-User") != "id1" {
		t.Fatalf("with a tossed bare cookie: %d %s", resp.StatusCode, body(t, resp))
	}
	if got := up.header().Get("Cookie"); got != "caddy_oidc_prefs=compact" {
		t.Fatalf("upstream Cookie = %q, want only the application's cookie", got)
	}
}

// checkHostCookies asserts that the response sets the named cookies (name
// prefixes) and that every cookie it sets is a valid __Host- cookie.
func checkHostCookies(t *testing.T, resp *http.Response, step string, names ...string) {
	t.Helper()
	set := resp.Cookies()
	for _, want := range names {
		found := false
		for _, ck := range set {
			found = found || strings.HasPrefix(ck.Name, want)
		}
		if !found {
			t.Errorf("%s: no cookie %s* in %v", step, want, resp.Header.Values("Set-Cookie"))
		}
	}
	for _, ck := range set {
		if !strings.HasPrefix(ck.Name, "__Host-") || !ck.Secure || ck.Domain != "" || ck.Path != "/" {
			t.Errorf("%s: %q is not a __Host- cookie a browser accepts", step, ck.String())
		}
	}
}

// tossSite is a site on app.example.test (plain HTTP, so without the
// __Host- prefix, as with cookie_domain) and browsers that resolve
// *.example.test to the loopback address, where a sibling subdomain
// (evil.example.test) can set cookies for example.test.
type tossSite struct {
	URL string
	op  *testop.OP
	up  *upstream
}

func startTossSite(t *testing.T) *tossSite {
	t.Helper()
	op := startOP(t, testop.Options{Clients: []testop.Client{{ID: "toss", Secret: "toss-secret",
		RedirectURIGlobs: []string{"http://app.example.test:*/**"}}}})
	up := newUpstream(t)
	site := startCaddyAt(t, fmt.Sprintf("app.example.test:%d", freePort(t)), fmt.Sprintf(`oidc {
		issuer %s
		client_id toss
		client_secret toss-secret
	}`, op.Issuer), up, "")
	return &tossSite{URL: site.URL, op: op, up: up}
}

// browser is a client whose jar keeps Domain cookies of example.test.
func (s *tossSite) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	dial := (&net.Dialer{}).DialContext
	return &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if host, port, _ := net.SplitHostPort(addr); strings.HasSuffix(host, ".example.test") {
				addr = net.JoinHostPort("127.0.0.1", port)
			}
			return dial(ctx, network, addr)
		}},
	}
}

// login logs user in with c and returns the status of GET /app/page after.
func (s *tossSite) login(t *testing.T, c *http.Client, user, password string) {
	t.Helper()
	resp := get(t, c, s.URL+"/app/page", navigate...)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("unauthenticated navigation: %d", resp.StatusCode)
	}
	loc, _ := resp.Location()
	cb, err := s.op.Login(context.Background(), c, loc.String(), user, password)
	if err != nil {
		t.Fatal(err)
	}
	if resp := get(t, c, cb, navigate...); resp.StatusCode != http.StatusFound {
		t.Fatalf("callback: %d %s", resp.StatusCode, body(t, resp))
	}
}

// user is who the upstream sees for GET path (and the status).
func (s *tossSite) user(t *testing.T, c *http.Client, path string) (int, string) {
	t.Helper()
	hits := s.up.count()
	resp := get(t, c, s.URL+path, "Accept", "application/json")
	if resp.StatusCode != http.StatusOK {
		if s.up.count() != hits {
			t.Fatalf("%s: %d but the upstream was called", path, resp.StatusCode)
		}
		return resp.StatusCode, ""
	}
	return resp.StatusCode, s.up.header().Get("X-Auth-Request-User")
}

// toss sets a cookie for example.test from the sibling evil.example.test,
// as its page can.
func toss(c *http.Client, name, value, path string) {
	evil, _ := url.Parse("http://evil.example.test/")
	c.Jar.SetCookies(evil, []*http.Cookie{{Name: name, Value: value, Domain: "example.test", Path: path}})
}

// TestCookieTossing: a sibling subdomain adds session cookies of our name
// to the victim's browser. A duplicate chunk (here the attacker's own valid
// session, under a longer Path so browsers send it first) is no session,
// never "the attacker's session"; a stray chunk does not log the user out
// for good: the jar is repaired and a fresh login works.
func TestCookieTossing(t *testing.T) {
	s := startTossSite(t)
	victim := s.browser()
	s.login(t, victim, testop.Username, testop.Password)
	if code, user := s.user(t, victim, "/app/page"); code != 200 || user != "id1" {
		t.Fatalf("victim after login: %d %q", code, user)
	}

	// The attacker's own session, valid on this site.
	attacker := s.browser()
	s.login(t, attacker, testop.Username2, testop.Password2)
	u, _ := url.Parse(s.URL)
	var theirs string
	for _, ck := range attacker.Jar.Cookies(u) {
		if ck.Name == "caddy_oidc_0" {
			theirs = ck.Value
		}
	}
	if code, user := s.user(t, attacker, "/app/page"); theirs == "" || code != 200 || user != "id2" {
		t.Fatalf("attacker session: %d %q", code, user)
	}

	t.Run("duplicate chunk", func(t *testing.T) {
		toss(victim, "caddy_oidc_0", theirs, "/app")
		if code, user := s.user(t, victim, "/app/page"); code != http.StatusUnauthorized {
			t.Fatalf("with a tossed duplicate chunk: %d as %q, want 401", code, user)
		}
		// The 401 expired both copies: the page navigates to login, and a
		// fresh login gives the victim's own session again.
		s.login(t, victim, testop.Username, testop.Password)
		if code, user := s.user(t, victim, "/app/page"); code != 200 || user != "id1" {
			t.Fatalf("fresh login after the tossed duplicate: %d %q", code, user)
		}
	})

	t.Run("stray chunk", func(t *testing.T) {
		toss(victim, "caddy_oidc_3", "x", "/")
		if code, _ := s.user(t, victim, "/app/page"); code != http.StatusUnauthorized {
			t.Fatalf("with a tossed stray chunk: %d, want 401", code)
		}
		// Tossed again right before the login: the callback's write
		// expires it under the attacker's Domain.
		toss(victim, "caddy_oidc_3", "x", "/")
		s.login(t, victim, testop.Username, testop.Password)
		for _, ck := range victim.Jar.Cookies(u) {
			if ck.Name == "caddy_oidc_3" {
				t.Fatal("the stray chunk outlives the login")
			}
		}
		for range 2 {
			if code, user := s.user(t, victim, "/app/page"); code != 200 || user != "id1" {
				t.Fatalf("after a fresh login: %d %q", code, user)
			}
		}
	})

	t.Run("duplicate flow cookie", func(t *testing.T) {
		fresh := s.browser()
		resp := get(t, fresh, s.URL+"/auth/login", navigate...)
		loc, _ := resp.Location()
		cb, err := s.op.Login(context.Background(), fresh, loc.String(), testop.Username, testop.Password)
		if err != nil {
			t.Fatal(err)
		}
		var flow *http.Cookie
		for _, ck := range fresh.Jar.Cookies(&url.URL{Scheme: "http", Host: u.Host, Path: "/auth/callback"}) {
			if strings.HasPrefix(ck.Name, "caddy_oidc_flow_") {
				flow = ck
			}
		}
		if flow == nil {
			t.Fatal("no flow cookie")
		}
		toss(fresh, flow.Name, flow.Value, "/auth/callback")
		resp = get(t, fresh, cb, navigate...)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body(t, resp), "two login cookies") {
			t.Fatalf("callback with a duplicate flow cookie: %d", resp.StatusCode)
		}
		for _, ck := range resp.Cookies() {
			if strings.HasPrefix(ck.Name, "caddy_oidc_") && ck.MaxAge > 0 {
				t.Fatalf("session cookie set: %s", ck.Name)
			}
		}
		s.login(t, fresh, testop.Username, testop.Password)
		if code, user := s.user(t, fresh, "/app/page"); code != 200 || user != "id1" {
			t.Fatalf("login after the refused callback: %d %q", code, user)
		}
	})
}

// TestRefreshCrossSite: POST /auth/refresh answers tokens, so another site
// must not make a logged-in browser call it: refused by fetch metadata (or
// Origin) with a 403, no refresh made; the same-origin call works.
func TestRefreshCrossSite(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	c := browser()
	if resp := login(t, c, op, site.URL, "/app"); resp.StatusCode != 200 {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	before := op.TokenCalls("refresh_token")
	for _, hdr := range [][]string{
		{"Sec-Fetch-Site", "cross-site", "Origin", "http://evil.example"},
		{"Sec-Fetch-Site", "same-site", "Origin", "http://evil." + strings.TrimPrefix(site.URL, "http://")},
		{"Origin", "http://evil.example"},
		{"Origin", "null"},
	} {
		resp := do(t, c, "POST", site.URL+"/auth/refresh", hdr...)
		var e map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode != http.StatusForbidden || e["error"] != "invalid_request" || e["access_token"] != "" {
			t.Fatalf("%v: %d %v, want 403 invalid_request", hdr, resp.StatusCode, e)
		}
		if len(resp.Cookies()) != 0 {
			t.Fatalf("%v: refused refresh set cookies", hdr)
		}
	}
	if n := op.TokenCalls("refresh_token") - before; n != 0 {
		t.Fatalf("%d refreshes made for cross-site requests", n)
	}
	for _, hdr := range [][]string{{"Sec-Fetch-Site", "same-origin", "Origin", site.URL}, {}} {
		resp := do(t, c, "POST", site.URL+"/auth/refresh", hdr...)
		var r map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&r)
		if resp.StatusCode != 200 || r["access_token"] == nil {
			t.Fatalf("same-origin refresh %v: %d %v", hdr, resp.StatusCode, r)
		}
	}
}
