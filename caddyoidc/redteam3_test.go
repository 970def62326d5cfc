package caddyoidc_test

// Red team 3: attacks across the provider boundary of a site with several
// providers (README "Several providers per site"). Each test says whether it
// is a FINDING (fails on main at the time of writing: the attack works) or a
// DEFENCE (passes: a regression test proving the attack is refused).

import (
	"context"
	"encoding/base64"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// loginAs logs c in at the named provider as the given test user.
func (e *twoProviders) loginAs(t *testing.T, c *http.Client, name, user, pass string) {
	t.Helper()
	op := e.corp
	if name == "partner" {
		op = e.partner
	}
	cb, err := op.Login(context.Background(), c, e.site.URL+"/auth/login?provider="+name+"&back=%2F", user, pass)
	if err != nil {
		t.Fatalf("login at %s: %v", name, err)
	}
	if resp := get(t, c, cb, navigate...); resp.StatusCode != http.StatusFound {
		t.Fatalf("callback at %s: %d %s", name, resp.StatusCode, body(t, resp))
	}
}

// FINDING. TestRedteam3TossedBareSiblingCookieShadowsSession:
// attack: with __Host- cookies (cookie_secure on), a sibling subdomain (or a
// network attacker on plain HTTP) cannot set __Host-caddy_oidc-*, but it can
// set the bare name caddy_oidc-corp_0=x with Domain=<parent>. In a
// single-provider site a bare-spelling cookie beside __Host- ones is not read
// (TestHostPrefixCookies). forSession, however, routes by scanChunks'
// `present`, which is true for a chunk of the *other* spelling too, and
// takes the first provider in configuration order whose cookie is present.
// impact: the victim's valid partner session is ignored: every request is
// unauthenticated (401 / redirect to corp's login, loginURL adds
// provider=corp because a corp cookie is "present"): a persistent logout
// (DoS) and login steering to the provider the attacker chooses, defeating
// the __Host- protection.
// expected: a cookie that the provider would not read (other spelling) does
// not choose the provider; the valid partner session is used (200, provider
// partner).
func TestRedteam3TossedBareSiblingCookieShadowsSession(t *testing.T) {
	e := startTwoProviders(t, testop.Options{}, "cookie_secure on")
	c := browser()
	e.loginAt(t, c, "partner")
	if resp := get(t, c, e.site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate: partner session: %d", resp.StatusCode)
	}
	resp := get(t, c, e.site.URL+"/api", "Cookie", "caddy_oidc-corp_0=tossed")
	if resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-Provider") != "partner" {
		t.Fatalf("a tossed bare (non-__Host-) corp cookie shadowed the valid __Host- partner session: %d", resp.StatusCode)
	}
	resp = get(t, c, e.site.URL+"/page", append([]string{"Cookie", "caddy_oidc-corp_0=tossed"}, navigate...)...)
	if loc, _ := resp.Location(); resp.StatusCode != 200 {
		t.Fatalf("navigation with a tossed bare corp cookie: %d to %v (login steered to corp)", resp.StatusCode, loc)
	}
}

// FINDING. TestRedteam3TossedSiblingSessionFixation:
// attack: cookie tossing where __Host- is not in use (plain HTTP, or
// cookie_domain): the attacker logs in at corp with their own account and
// tosses their corp session cookies (caddy_oidc-corp_*) into the victim's
// browser, which holds a partner session (caddy_oidc-partner_*). In a
// single-provider site a tossed chunk has the victim's chunk's name, so
// duplicates make "no session" (readChunked: "a cookie tossed in beside ours
// cannot choose the session"). With several providers the names differ,
// and forSession picks corp by configuration order.
// impact: session fixation: the victim's requests run as the attacker
// (uploads, messages, data entered go to the attacker's account); the
// victim's own partner session is silently ignored.
// expected: a request carrying session cookies of two providers fails
// closed (no session, as with duplicate chunks) or at least never runs as
// the tossed session: never 200 as the attacker.
func TestRedteam3TossedSiblingSessionFixation(t *testing.T) {
	e := startTwoProviders(t, testop.Options{})
	attacker := browser()
	e.loginAs(t, attacker, "corp", testop.Username, testop.Password) // sub id1
	victim := browser()
	e.loginAs(t, victim, "partner", testop.Username2, testop.Password2) // sub id2
	if resp := get(t, victim, e.site.URL+"/api"); resp.StatusCode != 200 || e.up.header().Get("X-Auth-Request-User") != testop.UserID2 {
		t.Fatalf("legitimate: victim: %d %q", resp.StatusCode, e.up.header().Get("X-Auth-Request-User"))
	}
	u, _ := url.Parse(e.site.URL)
	var tossed []*http.Cookie
	for _, ck := range attacker.Jar.Cookies(u) {
		if strings.HasPrefix(ck.Name, "caddy_oidc-corp_") {
			tossed = append(tossed, &http.Cookie{Name: ck.Name, Value: ck.Value})
		}
	}
	if len(tossed) == 0 {
		t.Fatal("attacker has no corp cookies")
	}
	victim.Jar.SetCookies(u, tossed)
	resp := get(t, victim, e.site.URL+"/api")
	h := e.up.header()
	if resp.StatusCode == 200 && (h.Get("X-Auth-Request-User") != testop.UserID2 || h.Get("X-Auth-Request-Provider") != "partner") {
		t.Fatalf("session fixation by a tossed sibling session: the victim's request ran as %q at %q",
			h.Get("X-Auth-Request-User"), h.Get("X-Auth-Request-Provider"))
	}
}

// FINDING. TestRedteam3LogoutWithTossedSiblingCookieEndsNothing:
// attack: as in TestRedteam3TossedBareSiblingCookieShadowsSession, a bare
// caddy_oidc-corp_0 is tossed in beside the victim's __Host- partner
// session; the victim logs out (POST /auth/logout, no provider named).
// The logout is dispatched to corp (the "present" cookie), which has no
// session: it ends nothing, expires nothing of partner's, and answers
// "logged out".
// impact: the user is told they are logged out (a shared computer) while
// their partner session lives on: the cookies in the browser (once the
// tossed one is gone) and any copy keep working; no revocation at partner.
// expected: logout ends the session of every provider whose cookie the
// request carries (or at least the one that is valid): the copy gets 401.
func TestRedteam3LogoutWithTossedSiblingCookieEndsNothing(t *testing.T) {
	e := startTwoProviders(t, testop.Options{}, "cookie_secure on")
	c := browser()
	e.loginAt(t, c, "partner")
	thief := copyCookies(t, c, e.site.URL, e.site.URL, nil)
	if resp := get(t, thief, e.site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate: copy before logout: %d", resp.StatusCode)
	}
	resp := do(t, c, "POST", e.site.URL+"/auth/logout", "Cookie", "caddy_oidc-corp_0=tossed")
	t.Logf("logout: %d", resp.StatusCode)
	if resp := get(t, thief, e.site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("logout with a tossed bare corp cookie left the partner session alive: copy answers %d", resp.StatusCode)
	}
}

// DEFENCE. TestRedteam3SessionCookieRenamedToSibling: corp's session
// cookies renamed to partner's names are sealed in corp's namespace: no
// session at partner (401), and nothing reaches upstream as partner.
func TestRedteam3SessionCookieRenamedToSibling(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			e := startTwoProviders(t, testop.Options{}, "session "+mode, "cookie_secret 0123456789abcdef0123456789abcdef")
			c := browser()
			e.loginAt(t, c, "corp")
			renamed := copyCookies(t, c, e.site.URL, e.site.URL, func(n string) string {
				return strings.Replace(n, "caddy_oidc-corp_", "caddy_oidc-partner_", 1)
			})
			hits := e.up.count()
			if resp := get(t, renamed, e.site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized || e.up.count() != hits {
				t.Fatalf("corp's session under partner's cookie name: %d", resp.StatusCode)
			}
		})
	}
}

// DEFENCE. TestRedteam3FlowCookieRenamedToSibling: a login started at
// partner; its flow cookie renamed to corp's flow cookie name and its code
// taken to corp's callback (a mix-up with the flow cookie moved too) is
// refused, and corp is never asked to redeem the code.
func TestRedteam3FlowCookieRenamedToSibling(t *testing.T) {
	e := startTwoProviders(t, testop.Options{}, "cookie_secret 0123456789abcdef0123456789abcdef")
	c := browser()
	cb, err := e.partner.Login(context.Background(), c, e.site.URL+"/auth/login?provider=partner&back=%2F", testop.Username, testop.Password)
	if err != nil {
		t.Fatal(err)
	}
	// The flow cookie's path is partner's callback.
	moved := copyCookies(t, c, e.site.URL+"/auth/callback/partner", e.site.URL+"/auth/callback/corp", func(n string) string {
		return strings.Replace(n, "caddy_oidc-partner_", "caddy_oidc-corp_", 1)
	})
	cbURL, _ := url.Parse(cb)
	cbURL.Path = "/auth/callback/corp"
	if cks := moved.Jar.Cookies(cbURL); len(cks) == 0 || !strings.Contains(cks[0].Name, "caddy_oidc-corp_flow") {
		t.Fatalf("setup: no renamed flow cookie for corp's callback: %v", cks)
	}
	if resp := get(t, moved, cbURL.String(), navigate...); resp.StatusCode < 400 || resp.StatusCode >= 500 {
		t.Fatalf("partner's flow cookie renamed to corp's, at corp's callback: %d", resp.StatusCode)
	}
	if n := e.corp.TokenCalls("authorization_code"); n != 0 {
		t.Fatalf("corp was asked to redeem %d codes", n)
	}
}

// DEFENCE. TestRedteam3ProviderQueryOnBoundRoutes: `?provider=corp` on
// the session routes, with a partner session, never acts on the partner
// session through corp (corp has no session: 401 / 403, no AZAT minted),
// and `?provider=` naming no provider is 404.
func TestRedteam3ProviderQueryOnBoundRoutes(t *testing.T) {
	e := startTwoProviders(t, testop.Options{}, "azat")
	c := browser()
	e.loginAt(t, c, "partner")
	if resp := get(t, c, e.site.URL+"/auth/token?provider=corp"); resp.StatusCode == 200 {
		t.Fatalf("AZAT minted at corp for a partner session: %s", body(t, resp))
	}
	for _, p := range []string{"/auth/refresh?provider=corp", "/auth/revoke?provider=corp"} {
		if resp := do(t, c, "POST", e.site.URL+p); resp.StatusCode == 200 {
			t.Fatalf("POST %s with a partner session: 200 %s", p, body(t, resp))
		}
	}
	if resp := get(t, c, e.site.URL+"/auth/userinfo?provider=corp"); resp.StatusCode == 200 {
		t.Fatalf("userinfo at corp for a partner session: %s", body(t, resp))
	}
	if resp := get(t, c, e.site.URL+"/auth/token?provider=nope"); resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown provider: %d", resp.StatusCode)
	}
	// The partner session still works, and mints at partner.
	m := mintAZAT(t, c, e.site.URL)
	if resp := get(t, browser(), e.site.URL+"/api", "Authorization", "Bearer "+m.Token); resp.StatusCode != 200 ||
		e.up.header().Get("X-Auth-Request-Provider") != "partner" {
		t.Fatalf("partner AZAT: %d", resp.StatusCode)
	}
}

// DEFENCE. TestRedteam3ChooserBackIsSafe: the chooser page keeps back only
// as a local path: the links never carry an absolute or scheme-relative
// back (open redirect after login), and markup in back is escaped.
func TestRedteam3ChooserBackIsSafe(t *testing.T) {
	e := startTwoProviders(t, testop.Options{})
	for _, back := range []string{"//evil.example/x", "https://evil.example/", "/\\evil.example", "/\t/evil.example", `/"><script>alert(1)</script>`} {
		resp := get(t, browser(), e.site.URL+"/auth/login?back="+url.QueryEscape(back), navigate...)
		page := body(t, resp)
		if resp.StatusCode != 200 || strings.Contains(page, "<script>") {
			t.Fatalf("back %q: %d\n%s", back, resp.StatusCode, page)
		}
		for _, part := range strings.Split(page, `href="`)[1:] {
			href := strings.ReplaceAll(part[:strings.IndexByte(part, '"')], "&amp;", "&")
			u, err := url.Parse(href)
			if err != nil {
				t.Fatalf("href %q: %v", href, err)
			}
			b := u.Query().Get("back")
			if !strings.HasPrefix(b, "/") || strings.HasPrefix(b, "//") || strings.HasPrefix(b, "/\\") || strings.ContainsAny(b, "\t\r\n") {
				t.Fatalf("back %q became %q in %q", back, b, href)
			}
		}
	}
}

// DEFENCE. TestRedteam3DispatchOddInputs: odd paths, provider names,
// tokens and cookies never make the dispatch answer 5xx (or panic), and
// none reaches upstream unauthenticated.
func TestRedteam3DispatchOddInputs(t *testing.T) {
	e := startTwoProviders(t, testop.Options{})
	jwt := func(payload string) string {
		return "eyJhbGciOiJSUzI1NiJ9." + b64(payload) + ".c2ln"
	}
	cases := [][]string{
		{"/auth/callback/"}, {"/auth/callback/corp/x"}, {"/auth/callback/CORP"}, {"/auth/callback/..%2fcorp"},
		{"/auth/backchannel-logout/"}, {"/auth/backchannel-logout/nope"}, {"/auth/login?provider=%00"},
		{"/auth/login?provider=corp&provider=partner"}, {"/auth/login?provider=" + strings.Repeat("a", 5000)},
		{"/auth/device?provider=nope"}, {"/auth/device/code?provider=-x"}, {"/auth/"}, {"/auth"},
		{"/api", "Authorization", "Bearer " + jwt(`{"iss":["`+e.corp.Issuer+`"]}`)},
		{"/api", "Authorization", "Bearer " + jwt(`{"iss":1,"aud":{}}`)},
		{"/api", "Authorization", "Bearer " + jwt(`{"iss":"`+e.corp.Issuer+`","aud":[null,1,{}]}`)},
		{"/api", "Authorization", "Bearer " + jwt(`{"iss":"`+e.corp.Issuer+`","iss":"`+e.partner.Issuer+`"}`)},
		{"/api", "Authorization", "Bearer .."}, {"/api", "Authorization", "Bearer " + strings.Repeat("a.", 3)},
		{"/api", "Authorization", "Bearer " + strings.Repeat("x", 70000)},
		{"/api", "Authorization", "Bearer " + jwt(`{"iss":"`+e.site.URL+`/corp"}`)},
		{"/api", "Cookie", "caddy_oidc-corp_0=; caddy_oidc-partner_0=x; caddy_oidc-_0=y; caddy_oidc-corp_99=z"},
		{"/api", "Cookie", "caddy_oidc-corp_flow_x=abc; caddy_oidc-partner_1=x"},
		{"/auth/token", "Cookie", "caddy_oidc-corp_0=x; caddy_oidc-partner_0=y"},
		{"/auth/logout", "Cookie", "caddy_oidc-corp_0=x; caddy_oidc-partner_0=y"},
	}
	hits := e.up.count()
	for _, tc := range cases {
		resp := get(t, browser(), e.site.URL+tc[0], tc[1:]...)
		if resp.StatusCode >= 500 {
			t.Errorf("%v: %d %s", tc, resp.StatusCode, body(t, resp))
		}
	}
	if e.up.count() != hits {
		t.Errorf("%d odd requests reached upstream", e.up.count()-hits)
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }

// DEFENCE. TestRedteam3SharedIssuerLogoutTokenAudience: two providers are
// two clients of one OP (one issuer, one key set). A back-channel logout
// token the OP issued for client b (aud b), posted to provider a's
// endpoint, verifies with the shared keys: a must still refuse it (aud is
// not a's client) and keep a's session. A bearer token for b is routed to
// b (by aud), never verified as a's.
func TestRedteam3SharedIssuerLogoutTokenAudience(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	webID, webSecret := op.WebClient()
	otherID, otherSecret := op.OtherClient()
	block := "oidc {\n\t\tprovider a {\n\t\t\tissuer " + op.Issuer + "\n\t\t\tclient_id " + webID + "\n\t\t\tclient_secret " + webSecret +
		"\n\t\t}\n\t\tprovider b {\n\t\t\tissuer " + op.Issuer + "\n\t\t\tclient_id " + otherID + "\n\t\t\tclient_secret " + otherSecret +
		"\n\t\t\tbearer_only\n\t\t}\n\t}"
	site := startCaddy(t, block, up, "")
	c := browser()
	login(t, c, op, site.URL, "/auth/login?provider=a&back=%2F")
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 || up.header().Get("X-Auth-Request-Provider") != "a" {
		t.Fatalf("legitimate: session at a: %d", resp.StatusCode)
	}
	now := time.Now()
	logoutFor := func(aud string) string {
		tok, err := op.SignJWT(map[string]any{"iss": op.Issuer, "aud": aud, "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(),
			"jti": uuid.NewString(), "sub": testop.UserID,
			"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}}, map[string]any{"typ": "logout+jwt"})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if code := postLogoutTokenAt(t, site.URL+"/auth/backchannel-logout/a", logoutFor(otherID)); code != http.StatusBadRequest {
		t.Fatalf("b's logout token at a: %d", code)
	}
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("a's session after b's logout token: %d", resp.StatusCode)
	}
	// An access token for b (aud b) goes to b, and a's does to a.
	for aud, want := range map[string]string{otherID: "b", webID: "a"} {
		at, err := op.SignJWT(map[string]any{"iss": op.Issuer, "aud": aud, "sub": testop.UserID, "iat": now.Unix(),
			"exp": now.Add(time.Minute).Unix(), "client_id": aud}, map[string]any{"typ": "at+jwt"})
		if err != nil {
			t.Fatal(err)
		}
		resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+at)
		if resp.StatusCode != 200 || up.header().Get("X-Auth-Request-Provider") != want {
			t.Fatalf("token with aud %s: %d at %q, want %s", aud, resp.StatusCode, up.header().Get("X-Auth-Request-Provider"), want)
		}
	}
}
