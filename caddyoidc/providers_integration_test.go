package caddyoidc_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/lestrrat-go/jwx/v2/jwk"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// twoProviders is a site with providers "corp" and "partner", each a real,
// independent OpenID Provider (own issuer, own keys), one storage.
type twoProviders struct {
	corp, partner *testop.OP
	up            *upstream
	site          *caddyInstance
}

func providerBlock(name string, op *testop.OP, extra ...string) string {
	id, secret := op.WebClient()
	return "provider " + name + " {\n\t\t\tissuer " + op.Issuer + "\n\t\t\tclient_id " + id + "\n\t\t\tclient_secret " + secret +
		"\n\t\t\tscopes openid profile email offline_access\n\t\t\t" + strings.Join(extra, "\n\t\t\t") + "\n\t\t}"
}

func startTwoProviders(t *testing.T, opts testop.Options, site ...string) *twoProviders {
	t.Helper()
	e := &twoProviders{corp: startOP(t, opts), partner: startOP(t, opts), up: newUpstream(t)}
	block := "oidc {\n\t\t" + providerBlock("corp", e.corp, "claim_header X-Corp-Email email") + "\n\t\t" +
		providerBlock("partner", e.partner, "label Partner SSO") + "\n\t\t" + strings.Join(site, "\n\t\t") + "\n\t}"
	e.site = startCaddy(t, block, e.up, "")
	return e
}

// loginAt logs c in at the named provider of the site.
func (e *twoProviders) loginAt(t *testing.T, c *http.Client, name string) *http.Response {
	t.Helper()
	op := e.corp
	if name == "partner" {
		op = e.partner
	}
	return login(t, c, op, e.site.URL, "/auth/login?provider="+name+"&back=%2Fhome")
}

func TestProvidersChooserAndLoginAtEach(t *testing.T) {
	e := startTwoProviders(t, testop.Options{})
	c := browser()

	// An unauthenticated navigation goes to the login route, which asks.
	resp := get(t, c, e.site.URL+"/home", navigate...)
	loc, _ := resp.Location()
	if resp.StatusCode != http.StatusFound || loc.Path != "/auth/login" {
		t.Fatalf("unauthenticated: %d %v", resp.StatusCode, loc)
	}
	resp = get(t, c, e.site.URL+loc.RequestURI(), navigate...)
	page := body(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(page, "Log in with corp") || !strings.Contains(page, "Log in with Partner SSO") ||
		!strings.Contains(page, `/auth/login?back=%2Fhome&amp;provider=partner`) {
		t.Fatalf("chooser: %d\n%s", resp.StatusCode, page)
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Fatalf("chooser CSP %q", csp)
	}
	if resp := get(t, c, e.site.URL+"/auth/login?provider=nope", navigate...); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("unknown provider: %d", resp.StatusCode)
	}

	for _, name := range []string{"corp", "partner"} {
		resp := e.loginAt(t, c, name)
		if resp.StatusCode != 200 {
			t.Fatalf("%s: %d %s", name, resp.StatusCode, body(t, resp))
		}
		h := e.up.header()
		if h.Get("X-Auth-Request-Provider") != name || h.Get("X-Auth-Request-User") != testop.UserID {
			t.Fatalf("%s: upstream got provider %q user %q", name, h.Get("X-Auth-Request-Provider"), h.Get("X-Auth-Request-User"))
		}
		// corp's claim header is corp's; partner's requests carry none.
		if got := h.Get("X-Corp-Email"); (name == "corp") != (got != "") {
			t.Fatalf("%s: X-Corp-Email %q", name, got)
		}
		if ck := h.Get("Cookie"); strings.Contains(ck, "caddy_oidc") {
			t.Fatalf("%s: the module's cookies reached upstream: %q", name, ck)
		}
	}
	// The login at partner replaced the corp session in this browser.
	u, _ := url.Parse(e.site.URL)
	for _, ck := range c.Jar.Cookies(u) {
		if strings.HasPrefix(ck.Name, "caddy_oidc-corp_") {
			t.Fatalf("corp session cookie %s kept after the login at partner", ck.Name)
		}
	}

	// A client cannot forge corp's claim header through partner's session.
	get(t, c, e.site.URL+"/x", "X-Corp-Email", "ceo@example.com", "X-Auth-Request-Provider", "corp")
	if h := e.up.header(); h.Get("X-Corp-Email") != "" || h.Get("X-Auth-Request-Provider") != "partner" {
		t.Fatalf("forged headers reached upstream: %v", h)
	}
}

func TestProvidersDefaultProviderSkipsChooser(t *testing.T) {
	e := startTwoProviders(t, testop.Options{}, "default_provider partner")
	resp := get(t, browser(), e.site.URL+"/auth/login?back=%2F", navigate...)
	loc, _ := resp.Location()
	if resp.StatusCode != http.StatusFound || !strings.HasPrefix(loc.String(), e.partner.Issuer) ||
		loc.Query().Get("redirect_uri") != e.site.URL+"/auth/callback/partner" {
		t.Fatalf("login without provider: %d %v", resp.StatusCode, loc)
	}
}

func TestProvidersBearerRoutedByIssuer(t *testing.T) {
	e := startTwoProviders(t, testop.Options{})
	id, secret := e.corp.WebClient()
	corpAT, corpID := codeFlowTokens(t, e.corp, id, secret)
	partnerAT, _ := codeFlowTokens(t, e.partner, id, secret)
	for name, tok := range map[string]string{"corp": corpAT, "partner": partnerAT} {
		resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+tok)
		if resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-Provider") != name {
			t.Fatalf("%s token: %d provider %q", name, resp.StatusCode, e.up.header().Get("X-Auth-Request-Provider"))
		}
	}

	// Tokens of another provider, or of one provider dressed as the other,
	// are refused, and the unknown issuer is never asked.
	stranger := startOP(t, testop.Options{})
	strangerAT, _ := codeFlowTokens(t, stranger, id, secret)
	stranger.ResetCounters()
	claims := unverifiedJSON(t, partnerAT)
	claims["iss"] = e.corp.Issuer // partner's key, corp's iss
	forged, err := e.partner.SignJWT(claims, nil)
	if err != nil {
		t.Fatal(err)
	}
	hits := e.up.count()
	for name, tok := range map[string]string{
		"unknown issuer":                 strangerAT,
		"partner-signed with corp's iss": forged,
		"corp's ID token":                corpID,
		"opaque, nobody introspects":     "opaque-token-value",
	} {
		resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+tok)
		if resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("%s: %d, want 401", name, resp.StatusCode)
		}
	}
	if n := stranger.Requests(testop.PathKeys) + stranger.Requests(testop.PathDiscovery); n != 0 {
		t.Fatalf("the unknown issuer was asked %d times", n)
	}
	if e.up.count() != hits {
		t.Fatal("a refused token reached upstream")
	}
}

// unverifiedJSON decodes a JWT's payload.
func unverifiedJSON(t *testing.T, tok string) map[string]any {
	t.Helper()
	var m map[string]any
	p := strings.Split(tok, ".")
	b, err := base64.RawURLEncoding.DecodeString(p[1])
	if err == nil {
		err = json.Unmarshal(b, &m)
	}
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestProvidersMixUpRefused(t *testing.T) {
	e := startTwoProviders(t, testop.Options{})
	c := browser()
	// A login started at partner...
	cb, err := e.partner.Login(context.Background(), c, e.site.URL+"/auth/login?provider=partner&back=%2F", testop.Username, testop.Password)
	if err != nil {
		t.Fatal(err)
	}
	cbURL, _ := url.Parse(cb)
	if cbURL.Path != "/auth/callback/partner" {
		t.Fatalf("callback %s", cb)
	}
	// ...whose code is taken to corp's callback is refused there (no flow
	// of corp's has that state; corp would redeem partner's code at corp).
	wrong := *cbURL
	wrong.Path = "/auth/callback/corp"
	if resp := get(t, c, wrong.String(), navigate...); resp.StatusCode < 400 || resp.StatusCode >= 500 {
		t.Fatalf("partner's code at corp's callback: %d", resp.StatusCode)
	}
	// RFC 9207: an iss naming corp for partner's flow is refused.
	q := cbURL.Query()
	q.Set("iss", e.corp.Issuer)
	mixed := *cbURL
	mixed.RawQuery = q.Encode()
	if resp := get(t, c, mixed.String(), navigate...); resp.StatusCode < 400 || resp.StatusCode >= 500 {
		t.Fatalf("callback with corp's iss: %d", resp.StatusCode)
	}
	// The bare callback names no provider.
	bare := *cbURL
	bare.Path = "/auth/callback"
	if resp := get(t, c, bare.String(), navigate...); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("bare callback: %d", resp.StatusCode)
	}
	if n := e.corp.TokenCalls("authorization_code"); n != 0 {
		t.Fatalf("corp was asked to redeem %d codes", n)
	}
}

func TestProvidersBackchannelLogoutPerProvider(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			e := startTwoProviders(t, testop.Options{}, "session "+mode)
			c := browser()
			e.loginAt(t, c, "corp")
			id, _ := e.corp.WebClient()
			logoutToken := func(op *testop.OP) string {
				now := time.Now()
				tok, err := op.SignJWT(map[string]any{"iss": op.Issuer, "aud": id, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
					"jti": uuid.NewString(), "sub": testop.UserID,
					"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}}, map[string]any{"typ": "logout+jwt"})
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			// partner's logout token at partner's endpoint, and at corp's:
			// neither ends the corp session.
			if code := postLogoutTokenAt(t, e.site.URL+"/auth/backchannel-logout/partner", logoutToken(e.partner)); code != 200 {
				t.Fatalf("partner's token at partner: %d", code)
			}
			if code := postLogoutTokenAt(t, e.site.URL+"/auth/backchannel-logout/corp", logoutToken(e.partner)); code != http.StatusBadRequest {
				t.Fatalf("partner's token at corp: %d", code)
			}
			if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 {
				t.Fatalf("corp session after partner's logouts: %d", resp.StatusCode)
			}
			if code := postLogoutTokenAt(t, e.site.URL+"/auth/backchannel-logout/corp", logoutToken(e.corp)); code != 200 {
				t.Fatalf("corp's token at corp: %d", code)
			}
			if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("corp session after corp's logout: %d", resp.StatusCode)
			}
		})
	}
}

func TestProvidersRefreshAtOwnProvider(t *testing.T) {
	e := startTwoProviders(t, testop.Options{AccessTokenLifetime: 2 * time.Second}, "refresh_before 1s")
	c := browser()
	e.loginAt(t, c, "partner")
	time.Sleep(1500 * time.Millisecond)
	if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("after expiry: %d", resp.StatusCode)
	}
	if n, m := e.partner.TokenCalls("refresh_token"), e.corp.TokenCalls("refresh_token"); n != 1 || m != 0 {
		t.Fatalf("refreshes: partner %d corp %d, want 1 and 0", n, m)
	}
}

func TestProvidersAZATFromEachLogin(t *testing.T) {
	e := startTwoProviders(t, testop.Options{}, "azat")
	tokens := map[string]string{}
	for _, name := range []string{"corp", "partner"} {
		c := browser()
		e.loginAt(t, c, name)
		m := mintAZAT(t, c, e.site.URL)
		if iss := azatauth.PeekIssuer(m.Token); iss != e.site.URL+"/"+name {
			t.Fatalf("%s AZAT iss %q", name, iss)
		}
		tokens[name] = m.Token
	}
	for name, tok := range tokens {
		resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+tok)
		if resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-Provider") != name {
			t.Fatalf("%s AZAT: %d provider %q", name, resp.StatusCode, e.up.header().Get("X-Auth-Request-Provider"))
		}
	}
	// One JWKS publishes both providers' keys.
	resp := get(t, browser(), e.site.URL+"/.well-known/jwks.json")
	set, err := jwk.ParseReader(resp.Body)
	if err != nil || set.Len() != 2 {
		t.Fatalf("jwks: %v, %d keys", err, set.Len())
	}
	// An AZAT re-issued with the other provider's iss does not verify.
	claims := unverifiedJSON(t, tokens["corp"])
	parts := strings.Split(tokens["corp"], ".")
	claims["iss"] = e.site.URL + "/partner"
	p, _ := json.Marshal(claims)
	forged := parts[0] + "." + base64.RawURLEncoding.EncodeToString(p) + "." + parts[2]
	if resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+forged); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("AZAT with the other provider's iss: %d", resp.StatusCode)
	}
}

// postLogoutTokenAt posts a logout token to a back-channel logout endpoint.
func postLogoutTokenAt(t *testing.T, endpoint, token string) int {
	t.Helper()
	resp, err := http.PostForm(endpoint, url.Values{"logout_token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestProvidersDeviceFlowAtNamedProvider(t *testing.T) {
	e := startTwoProviders(t, testop.Options{}, "azat")
	resp, err := http.PostForm(e.site.URL+"/auth/device/code?provider=partner", url.Values{"client_id": {"test-cli"}})
	if err != nil {
		t.Fatal(err)
	}
	var d deviceStart
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil || resp.StatusCode != 200 {
		t.Fatalf("device code: %d %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if !strings.HasSuffix(d.VerificationURI, "/auth/device?provider=partner") ||
		!strings.Contains(d.VerificationURIComplete, "?provider=partner&user_code=") {
		t.Fatalf("verification URIs %q %q", d.VerificationURI, d.VerificationURIComplete)
	}
	poll := func(provider string) (int, map[string]any) {
		return pollDeviceAt(t, e.site.URL+"/auth/device/token?provider="+provider, d.DeviceCode)
	}
	// A user logged in at corp cannot approve partner's code: corp does
	// not know it.
	corpUser := browser()
	e.loginAt(t, corpUser, "corp")
	if resp := get(t, corpUser, e.site.URL+"/auth/device?user_code="+url.QueryEscape(d.UserCode), navigate...); strings.Contains(body(t, resp), "test-cli") {
		t.Fatal("corp's device page shows partner's code")
	}
	c := browser()
	e.loginAt(t, c, "partner")
	decide(t, c, e.site.URL, d.UserCode, "approve")
	// Polled at corp, the code is unknown; at partner it gives an AZAT.
	if code, m := poll("corp"); code != http.StatusBadRequest {
		t.Fatalf("polled at corp: %d %v", code, m)
	}
	code, m := poll("partner")
	tok, _ := m["access_token"].(string)
	if code != 200 || tok == "" {
		t.Fatalf("polled at partner: %d %v", code, m)
	}
	if resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+tok); resp.StatusCode != 200 ||
		e.up.header().Get("X-Auth-Request-Provider") != "partner" {
		t.Fatalf("device AZAT: %d provider %q", resp.StatusCode, e.up.header().Get("X-Auth-Request-Provider"))
	}
}

// TestProvidersTossedSiblingChunk: a sibling subdomain tosses a chunk of
// the other provider's session cookie beside the user's. The request then
// has no session (neither provider's cookies choose it), the navigation
// goes to the chooser, not to the provider the tossed cookie names, and the
// browser recovers with a fresh login, also when the chunk was tossed under
// a Path only the page matches (never sent to the callback, so the login's
// expiry of the other provider's cookies cannot reach it: the sessionless
// request itself expires it).
func TestProvidersTossedSiblingChunk(t *testing.T) {
	opts := testop.Options{Clients: []testop.Client{{ID: "toss", Secret: "toss-secret",
		RedirectURIGlobs: []string{"http://app.example.test:*/**"}}}}
	corp, partner := startOP(t, opts), startOP(t, opts)
	up := newUpstream(t)
	block := func(name string, op *testop.OP) string {
		return "provider " + name + " {\n\t\t\tissuer " + op.Issuer + "\n\t\t\tclient_id toss\n\t\t\tclient_secret toss-secret\n\t\t}"
	}
	site := startCaddyAt(t, fmt.Sprintf("app.example.test:%d", freePort(t)),
		"oidc {\n\t\t"+block("corp", corp)+"\n\t\t"+block("partner", partner)+"\n\t}", up, "")
	s := &tossSite{URL: site.URL, up: up}
	for _, path := range []string{"/", "/app"} {
		t.Run("tossed under Path "+path, func(t *testing.T) {
			victim := s.browser()
			login(t, victim, corp, s.URL, "/auth/login?provider=corp&back=%2Fapp%2Fpage")
			if code, user := s.user(t, victim, "/app/page"); code != 200 || user != testop.UserID {
				t.Fatalf("victim after login: %d %q", code, user)
			}
			toss(victim, "caddy_oidc-partner_0", "tossed", path)
			resp := get(t, victim, s.URL+"/app/page", navigate...)
			if loc, _ := resp.Location(); resp.StatusCode != http.StatusFound || loc == nil || loc.Path != "/auth/login" || loc.Query().Has("provider") {
				t.Fatalf("navigation with both providers' cookies: %d to %v, want the chooser", resp.StatusCode, loc)
			}
			if code, user := s.user(t, victim, "/app/page"); code != http.StatusUnauthorized {
				t.Fatalf("after the tossed partner chunk: %d as %q, want 401", code, user)
			}
			login(t, victim, corp, s.URL, "/auth/login?provider=corp&back=%2Fapp%2Fpage")
			if code, user := s.user(t, victim, "/app/page"); code != 200 || user != testop.UserID {
				t.Fatalf("fresh login after the tossed chunk: %d %q (the browser stays without a session)", code, user)
			}
		})
	}
}
