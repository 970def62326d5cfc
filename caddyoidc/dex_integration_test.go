package caddyoidc_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/caddyoidc"
	"github.com/caddy-oidc/caddy-oidc/internal/testdex"
	"github.com/caddy-oidc/caddy-oidc/internal/testop"
	"golang.org/x/oauth2"
)

// dexSite is one Caddy site with two real, independent OpenID Providers:
// "corp" (testop, zitadel-based) and "dex" (a dex binary).
type dexSite struct {
	corp *testop.OP
	dex  *testdex.Dex
	up   *upstream
	site *caddyInstance
}

// startDexSite picks the site's port first (dex compares redirect URIs
// exactly), starts both providers and Caddy. dexExtra are lines of the dex
// provider block, site lines of the oidc block.
func startDexSite(t *testing.T, opOpts testop.Options, dexOpts testdex.Options, dexExtra []string, site ...string) *dexSite {
	t.Helper()
	port := freePort(t)
	origin := fmt.Sprintf("http://127.0.0.1:%d", port)
	dexOpts.RedirectURIs = []string{origin + "/auth/callback/dex"}
	e := &dexSite{corp: startOP(t, opOpts), dex: testdex.Start(t, dexOpts), up: newUpstream(t)}
	id, secret := e.dex.WebClient()
	dexBlock := "provider dex {\n\t\t\tissuer " + e.dex.Issuer() + "\n\t\t\tclient_id " + id + "\n\t\t\tclient_secret " + secret +
		"\n\t\t\tscopes openid profile email offline_access\n\t\t\tbearer_id_token_shaped accept\n\t\t\t" +
		strings.Join(dexExtra, "\n\t\t\t") + "\n\t\t}"
	block := "oidc {\n\t\t" + providerBlock("corp", e.corp, "claim_header X-Corp-Email email") + "\n\t\t" + dexBlock +
		"\n\t\t" + strings.Join(site, "\n\t\t") + "\n\t}"
	e.site = startCaddyOn(t, port, block, e.up, "")
	return e
}

// loginDex logs c in at the site's dex provider through dex's password form
// and returns the response of the page the login went back to.
func (e *dexSite) loginDex(t *testing.T, c *http.Client) *http.Response {
	t.Helper()
	email, password := e.dex.User()
	cb, err := e.dex.Login(context.Background(), c, e.site.URL+"/auth/login?provider=dex&back=%2Fhome", email, password)
	if err != nil {
		t.Fatalf("login at dex: %v", err)
	}
	if u, _ := url.Parse(cb); u == nil || u.Path != "/auth/callback/dex" {
		t.Fatalf("dex redirected to %s", cb)
	}
	resp := get(t, c, cb, navigate...)
	if resp.StatusCode != http.StatusFound {
		t.Fatalf("dex callback: %d %s", resp.StatusCode, body(t, resp))
	}
	back, _ := resp.Location()
	return get(t, c, e.site.URL+back.RequestURI(), navigate...)
}

func (e *dexSite) loginCorp(t *testing.T, c *http.Client) *http.Response {
	t.Helper()
	return login(t, c, e.corp, e.site.URL, "/auth/login?provider=corp&back=%2Fhome")
}

var sessionChunk = regexp.MustCompile(`^caddy_oidc-([a-z]+)_([0-9]+)$`)

// sessionCookies returns the session cookie chunks in c's jar by provider,
// in chunk order.
func sessionCookies(t *testing.T, c *http.Client, site string) map[string][]*http.Cookie {
	t.Helper()
	u, _ := url.Parse(site)
	out := map[string][]*http.Cookie{}
	for _, ck := range c.Jar.Cookies(u) {
		if m := sessionChunk.FindStringSubmatch(ck.Name); m != nil {
			out[m[1]] = append(out[m[1]], ck)
		}
	}
	for _, cks := range out {
		sort.Slice(cks, func(i, j int) bool {
			a, _ := strconv.Atoi(sessionChunk.FindStringSubmatch(cks[i].Name)[2])
			b, _ := strconv.Atoi(sessionChunk.FindStringSubmatch(cks[j].Name)[2])
			return a < b
		})
	}
	return out
}

// sessionRefreshToken is the refresh token of c's session at the named
// provider.
func (e *dexSite) sessionRefreshToken(t *testing.T, c *http.Client, name string) string {
	t.Helper()
	var v strings.Builder
	for _, ck := range sessionCookies(t, c, e.site.URL)[name] {
		v.WriteString(ck.Value)
	}
	rt, err := caddyoidc.SessionRefreshToken(e.site.Storage, v.String())
	if err != nil || rt == "" {
		t.Fatalf("%s session's refresh token: %q %v", name, rt, err)
	}
	return rt
}

// withJWT returns tok with its header and payload changed by edit; the
// signature stays the original's, so it no longer matches.
func withJWT(t *testing.T, tok string, edit func(header, payload map[string]any)) string {
	t.Helper()
	p := strings.Split(tok, ".")
	if len(p) != 3 {
		t.Fatalf("not a JWS: %q", tok)
	}
	var parts [2]map[string]any
	for i := range parts {
		b, err := base64.RawURLEncoding.DecodeString(p[i])
		if err == nil {
			err = json.Unmarshal(b, &parts[i])
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	edit(parts[0], parts[1])
	for i := range parts {
		b, _ := json.Marshal(parts[i])
		p[i] = base64.RawURLEncoding.EncodeToString(b)
	}
	return strings.Join(p, ".")
}

func jwtHeader(t *testing.T, tok string) map[string]any {
	t.Helper()
	var h map[string]any
	withJWT(t, tok, func(header, _ map[string]any) { h = header })
	return h
}

func TestDexAndTestOPLoginAtEach(t *testing.T) {
	e := startDexSite(t, testop.Options{}, testdex.Options{}, nil)
	corp, dex := browser(), browser()

	for _, tc := range []struct {
		name  string
		c     *http.Client
		login func(*testing.T, *http.Client) *http.Response
		sub   string
	}{
		{"corp", corp, e.loginCorp, testop.UserID},
		{"dex", dex, e.loginDex, e.dex.Subject()},
	} {
		resp := tc.login(t, tc.c)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", tc.name, resp.StatusCode, body(t, resp))
		}
		h := e.up.header()
		if h.Get("X-Auth-Request-Provider") != tc.name || h.Get("X-Auth-Request-User") != tc.sub {
			t.Fatalf("%s: upstream got provider %q user %q, want user %q", tc.name,
				h.Get("X-Auth-Request-Provider"), h.Get("X-Auth-Request-User"), tc.sub)
		}
		if got := h.Get("X-Corp-Email"); (tc.name == "corp") != (got != "") {
			t.Fatalf("%s: X-Corp-Email %q", tc.name, got)
		}
		if ck := h.Get("Cookie"); strings.Contains(ck, "caddy_oidc") {
			t.Fatalf("%s: the module's cookies reached upstream: %q", tc.name, ck)
		}
		if got := sessionCookies(t, tc.c, e.site.URL); len(got) != 1 || len(got[tc.name]) == 0 {
			t.Fatalf("%s: session cookies %v", tc.name, got)
		}
	}

	// Both sessions live side by side, each answered as its own provider.
	for name, c := range map[string]*http.Client{"corp": corp, "dex": dex} {
		if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-Provider") != name {
			t.Fatalf("%s session: %d provider %q", name, resp.StatusCode, e.up.header().Get("X-Auth-Request-Provider"))
		}
	}

	// A provider's session cookie is its own: dex's session under corp's
	// cookie names (and corp's under dex's) opens nothing.
	hits := e.up.count()
	for from, to := range map[string]string{"dex": "corp", "corp": "dex"} {
		c := map[string]*http.Client{"corp": corp, "dex": dex}[from]
		var pairs []string
		for i, ck := range sessionCookies(t, c, e.site.URL)[from] {
			pairs = append(pairs, "caddy_oidc-"+to+"_"+strconv.Itoa(i)+"="+ck.Value)
		}
		if resp := get(t, browser(), e.site.URL+"/api", "Cookie", strings.Join(pairs, "; ")); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s's session under %s's cookie: %d", from, to, resp.StatusCode)
		}
	}
	if e.up.count() != hits {
		t.Fatal("a session under another provider's cookie reached upstream")
	}

	// A login at dex in the browser with the corp session replaces it.
	e.loginDex(t, corp)
	if got := sessionCookies(t, corp, e.site.URL); len(got["corp"]) != 0 || len(got["dex"]) == 0 {
		t.Fatalf("after the login at dex: session cookies %v", got)
	}
	get(t, corp, e.site.URL+"/x", "X-Corp-Email", "ceo@example.com", "X-Auth-Request-Provider", "corp")
	if h := e.up.header(); h.Get("X-Corp-Email") != "" || h.Get("X-Auth-Request-Provider") != "dex" ||
		h.Get("X-Auth-Request-User") != e.dex.Subject() {
		t.Fatalf("forged headers reached upstream: %v", h)
	}
}

func TestDexBearerAndTestOPBearer(t *testing.T) {
	e := startDexSite(t, testop.Options{}, testdex.Options{}, nil)
	email, password := e.dex.User()
	tok, err := e.dex.PasswordGrant(context.Background(), email, password)
	if err != nil {
		t.Fatal(err)
	}
	dexAT := tok.AccessToken
	id, secret := e.corp.WebClient()
	corpAT, _ := codeFlowTokens(t, e.corp, id, secret)

	legit := func() {
		t.Helper()
		for _, tc := range []struct{ name, tok, sub string }{
			{"dex", dexAT, e.dex.Subject()},
			{"corp", corpAT, testop.UserID},
		} {
			resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+tc.tok)
			h := e.up.header()
			if resp.StatusCode != 200 || h.Get("X-Auth-Request-Provider") != tc.name || h.Get("X-Auth-Request-User") != tc.sub {
				t.Fatalf("%s token: %d provider %q user %q", tc.name, resp.StatusCode, h.Get("X-Auth-Request-Provider"), h.Get("X-Auth-Request-User"))
			}
		}
	}
	legit()

	corpKid, _ := jwtHeader(t, corpAT)["kid"].(string)
	dexKid, _ := jwtHeader(t, dexAT)["kid"].(string)
	if corpKid == "" || dexKid == "" || corpKid == dexKid {
		t.Fatalf("kids: corp %q dex %q", corpKid, dexKid)
	}
	hits := e.up.count()
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"dex token claiming corp's iss", withJWT(t, dexAT, func(_, p map[string]any) { p["iss"] = e.corp.Issuer })},
		{"dex token with corp's kid", withJWT(t, dexAT, func(h, _ map[string]any) { h["kid"] = corpKid })},
		{"dex token with corp's iss and kid", withJWT(t, dexAT, func(h, p map[string]any) { h["kid"] = corpKid; p["iss"] = e.corp.Issuer })},
		{"dex token with another sub", withJWT(t, dexAT, func(_, p map[string]any) { p["sub"] = "someone-else" })},
		{"corp token claiming dex's iss", withJWT(t, corpAT, func(_, p map[string]any) { p["iss"] = e.dex.Issuer() })},
		{"corp token with dex's kid", withJWT(t, corpAT, func(h, _ map[string]any) { h["kid"] = dexKid })},
		{"corp token with dex's iss and kid", withJWT(t, corpAT, func(h, p map[string]any) { h["kid"] = dexKid; p["iss"] = e.dex.Issuer() })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+tc.tok); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("%d, want 401", resp.StatusCode)
			}
		})
	}
	if e.up.count() != hits {
		t.Fatal("a tampered token reached upstream")
	}
	legit()
}

func TestDexAZATFromLogin(t *testing.T) {
	e := startDexSite(t, testop.Options{}, testdex.Options{}, nil, "azat")
	c := browser()
	e.loginDex(t, c)
	m := mintAZAT(t, c, e.site.URL)
	if iss := azatauth.PeekIssuer(m.Token); iss != e.site.URL+"/dex" {
		t.Fatalf("AZAT iss %q, want %s/dex", iss, e.site.URL)
	}
	resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+m.Token)
	h := e.up.header()
	if resp.StatusCode != 200 || h.Get("X-Auth-Request-Provider") != "dex" || h.Get("X-Auth-Request-User") != e.dex.Subject() {
		t.Fatalf("dex AZAT: %d provider %q user %q", resp.StatusCode, h.Get("X-Auth-Request-Provider"), h.Get("X-Auth-Request-User"))
	}
	// The same AZAT dressed as corp's does not verify.
	forged := withJWT(t, m.Token, func(_, p map[string]any) { p["iss"] = e.site.URL + "/corp" })
	if resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+forged); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("dex AZAT with corp's iss: %d", resp.StatusCode)
	}
}

// dexShortLived: dex's access tokens live as long as its ID tokens; the
// site refreshes a session 2s before that.
var dexShortLived = testdex.Options{IDTokenLifetime: 3 * time.Second}

func TestDexRefresh(t *testing.T) {
	e := startDexSite(t, testop.Options{}, dexShortLived, nil, "refresh_before 2s")
	c := browser()
	e.loginDex(t, c)
	before := e.sessionRefreshToken(t, c, "dex")
	time.Sleep(1500 * time.Millisecond)
	if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-Provider") != "dex" {
		t.Fatalf("after the refresh: %d provider %q", resp.StatusCode, e.up.header().Get("X-Auth-Request-Provider"))
	}
	// dex rotated the refresh token: the refresh happened at dex, and the
	// spent one is refused there.
	after := e.sessionRefreshToken(t, c, "dex")
	if after == before {
		t.Fatal("the session's refresh token did not change: no refresh at dex")
	}
	if _, err := e.dex.Refresh(context.Background(), before); err == nil {
		t.Fatal("dex accepted the spent refresh token")
	}
	if n := e.corp.TokenCalls("refresh_token"); n != 0 {
		t.Fatalf("corp was asked for %d refreshes", n)
	}
	// The refreshed session keeps working past the first token's lifetime.
	time.Sleep(2 * time.Second)
	if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-User") != e.dex.Subject() {
		t.Fatalf("later: %d user %q", resp.StatusCode, e.up.header().Get("X-Auth-Request-User"))
	}
}

// dex answers invalid_request (not invalid_grant) for a spent refresh
// token; the session must end there instead of retrying forever.
func TestDexSpentRefreshTokenEndsSession(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			e := startDexSite(t, testop.Options{}, dexShortLived, nil, "refresh_before 2s", "session "+mode)
			c := browser()
			e.loginDex(t, c)
			if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 {
				t.Fatalf("after login: %d", resp.StatusCode)
			}
			// Spend the session's refresh token behind the site's back.
			rt := e.sessionRefreshToken(t, c, "dex")
			if _, err := e.dex.Refresh(context.Background(), rt); err != nil {
				t.Fatalf("refresh at dex: %v", err)
			}
			var re *oauth2.RetrieveError
			if _, err := e.dex.Refresh(context.Background(), rt); !errors.As(err, &re) || re.ErrorCode != "invalid_request" || re.Response.StatusCode != 400 {
				t.Fatalf("spent refresh token at dex: %v (the premise of this test is dex's invalid_request)", err)
			}
			time.Sleep(1500 * time.Millisecond)
			hits := e.up.count()
			if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("after the spent refresh token: %d, want 401", resp.StatusCode)
			}
			if got := sessionCookies(t, c, e.site.URL); len(got["dex"]) != 0 {
				t.Fatalf("the dead session's cookie was kept: %v", got)
			}
			resp := get(t, c, e.site.URL+"/page", navigate...)
			if loc, _ := resp.Location(); resp.StatusCode != http.StatusFound || loc == nil || loc.Path != "/auth/login" {
				t.Fatalf("navigation after the session ended: %d %v", resp.StatusCode, loc)
			}
			if e.up.count() != hits {
				t.Fatal("the ended session reached upstream")
			}
			// A new login at dex works again.
			if resp := e.loginDex(t, c); resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-Provider") != "dex" {
				t.Fatalf("login again: %d", resp.StatusCode)
			}
		})
	}
}

// A refresh that fails for want of dex (network error) never ends the
// session: its access token is used while it lasts, then 503.
func TestDexUnreachableRefreshKeepsSession(t *testing.T) {
	e := startDexSite(t, testop.Options{}, testdex.Options{IDTokenLifetime: 6 * time.Second}, nil, "refresh_before 5s", "idp_timeout 1s")
	c := browser()
	e.loginDex(t, c)
	e.dex.Close()
	time.Sleep(1500 * time.Millisecond) // refresh due, the token good for 3s more
	if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-Provider") != "dex" {
		t.Fatalf("dex down, token still valid: %d", resp.StatusCode)
	}
	time.Sleep(5 * time.Second)
	resp := get(t, c, e.site.URL+"/api")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("dex down, token expired: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if got := sessionCookies(t, c, e.site.URL); len(got["dex"]) == 0 {
		t.Fatal("the session cookie was dropped while dex was unreachable")
	}
}

// An AZAT's grant holds dex's refresh token; once dex calls it expired
// (invalid_request, "Refresh token expired."), the grant ends: AZATs and
// the browser session answer 401 instead of retrying at dex forever.
func TestDexExpiredRefreshTokenEndsAZATGrant(t *testing.T) {
	e := startDexSite(t, testop.Options{},
		testdex.Options{IDTokenLifetime: 3 * time.Second, RefreshTokenValidIfNotUsedFor: 2 * time.Second},
		nil, "refresh_before 2s", "azat")
	c := browser()
	e.loginDex(t, c)
	m := mintAZAT(t, c, e.site.URL)
	if resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+m.Token); resp.StatusCode != 200 ||
		e.up.header().Get("X-Auth-Request-Provider") != "dex" {
		t.Fatalf("AZAT: %d", resp.StatusCode)
	}
	// Premise: dex answers an expired refresh token with invalid_request.
	email, password := e.dex.User()
	probe, err := e.dex.PasswordGrant(context.Background(), email, password)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // every refresh token unused for 2s: expired
	var re *oauth2.RetrieveError
	if _, err := e.dex.Refresh(context.Background(), probe.RefreshToken); !errors.As(err, &re) ||
		re.ErrorCode != "invalid_request" || re.Response.StatusCode != 400 {
		t.Fatalf("expired refresh token at dex: %v", err)
	}
	hits := e.up.count()
	if resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+m.Token); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("AZAT after dex expired the refresh token: %d, want 401", resp.StatusCode)
	}
	if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("session after dex expired the refresh token: %d, want 401", resp.StatusCode)
	}
	if e.up.count() != hits {
		t.Fatal("the ended grant reached upstream")
	}
}
