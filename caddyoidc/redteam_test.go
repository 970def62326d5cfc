package caddyoidc_test

import (
	"context"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// Red-team attacks on issue 9's fixes. Each test is the attack and fails
// while the weakness is there.

// TestRedteamStoreLogoutResurrectedByOtherInstance: `session store` with
// `azat { logout keep }` on two instances of one namespace. After a logout
// at A (the stored record is deleted), instance B still serves the copied
// cookie from its session cache (the documented session_cache lag) and, as
// the access token needs a refresh, refreshes it through the grant (kept on
// logout) and stores the session again (saveSession -> storeSession, with
// no check that the record still exists). From then on A, and every
// instance, accepts the copied cookie until session_lifetime: the logout is
// undone for good.
func TestRedteamStoreLogoutResurrectedByOtherInstance(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: time.Minute})
	up := newUpstream(t)
	block := oidcBlock(op, "namespace shared", "session store", "session_cache 1m", "refresh_before 10m",
		"azat {\n\t\t\tlogout keep\n\t\t}")
	a, b := twoSites(t, up, block, block)
	c := browser()
	login(t, c, op, a, "/")
	thiefA := copyCookies(t, c, a, a, nil)
	thiefA2 := copyCookies(t, c, a, a, nil) // thiefA's cookies are expired by the 401
	thiefB := copyCookies(t, c, a, b, nil)
	if resp := get(t, thiefB, b+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow: instance B before logout: %d", resp.StatusCode)
	}
	if resp := do(t, c, "POST", a+"/auth/logout"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	if resp := get(t, thiefA, a+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("copied cookie at A right after logout: %d", resp.StatusCode)
	}
	// B within its session cache: the documented lag (at most session_cache).
	n0 := op.TokenCalls("refresh_token")
	t.Logf("B after logout: %d, refreshes before %d after %d", get(t, thiefB, b+"/api").StatusCode, n0, op.TokenCalls("refresh_token"))
	// A has no cached copy: it reads storage.
	if resp := get(t, thiefA2, a+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("the logged-out session was stored again by instance B's refresh: A accepts the copied cookie after logout (%d)", resp.StatusCode)
	}
}

// TestRedteamJSONSitesShareNamespace: two sites configured in JSON (the
// admin API, config management tools, `caddy adapt` output edited by hand)
// carry no `site` field unless the operator adds one; the namespace is then
// derived from the provider and client alone and the AZAT issuer from the
// request's Host, exactly issue 9's first two attacks: site A's session
// cookie is accepted by site B. Module.go says "Sites never share sessions
// ... unless they share a Namespace"; nothing warns or refuses.
func TestRedteamJSONSitesShareNamespace(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	a, b := "http://127.0.0.1:"+itoa(freePort(t)), "http://127.0.0.1:"+itoa(freePort(t))
	proxy := "\n\treverse_proxy " + strings.TrimPrefix(up.URL, "http://") + "\n}\n"
	block := oidcBlock(op)
	cf := "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system " + t.TempDir() +
		"\n}\n" + a + " {\n\t" + block + proxy + b + " {\n\t" + block + proxy
	cfg, _, err := caddyconfigAdapt(cf)
	if err != nil {
		t.Fatal(err)
	}
	// The JSON an operator writes: no "site" (the Caddyfile adapter's addition).
	cfg = regexp.MustCompile(`,"site":"[^"]*"`).ReplaceAll(cfg, nil)
	cfg = regexp.MustCompile(`"site":"[^"]*",`).ReplaceAll(cfg, nil)
	if strings.Contains(string(cfg), `"site"`) {
		t.Fatal("site left in the JSON")
	}
	// Refused at start-up, naming what is missing: sites never fall back to
	// sharing one namespace per provider and client.
	err = caddy.Load(cfg, true)
	t.Cleanup(func() { _ = caddy.Stop() })
	if err == nil || !strings.Contains(err.Error(), "site is required") {
		t.Fatalf("a JSON config without site or namespace loaded: %v", err)
	}
}

// TestRedteamLogoutWithTossedChunkEndsNothing: a sibling subdomain (or any
// page that can set a cookie for the site when __Host- is not in use:
// cookie_domain, plain HTTP) tosses in a second caddy_oidc_0. Duplicate
// chunks are "no session" (issue 9 item 9), so POST /auth/logout finds no
// session, ends nothing server-side (no revocation, grant kept), clears the
// browser's cookies and shows "You are logged out". A copy of the cookie
// taken before keeps working: the user was told their session ended.
// Logout must fail closed (refuse, or end the session the real chunks
// name), never report success while the session lives on.
func TestRedteamLogoutWithTossedChunkEndsNothing(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	thief := copyCookies(t, c, site.URL, site.URL, nil)
	if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow: copy before logout: %d", resp.StatusCode)
	}
	// The jar adds the real cookies after this one: two caddy_oidc_0.
	resp := do(t, c, "POST", site.URL+"/auth/logout", "Cookie", "caddy_oidc_0=tossed")
	if resp.StatusCode == http.StatusSeeOther {
		loc, _ := resp.Location()
		t.Logf("logout answered 303 to %s", loc)
	}
	if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("logout with a tossed duplicate chunk reported success but the session lives on: copy answers %d", resp.StatusCode)
	}
}

// TestDeviceApprovalEndsWithLogout (red team): a user approves a device
// code (phished, or regretted), then logs out to end everything, and logs
// in again a little later, within the code's 10 minutes. The approved
// record used to name only the grant key (iss#sub), and the new login
// recreates that grant (keeping the jti window), so the attacker's next
// poll got a fresh AZAT. Now the approval records the grant's MinJTI,
// which the logout moved: the poll gets access_denied, and a code approved
// after the new login works.
func TestDeviceApprovalEndsWithLogout(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	d := startDevice(t, site.URL)
	if resp := decide(t, c, site.URL, d.UserCode, "approve"); resp.StatusCode != 200 {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
	if resp := do(t, c, "POST", site.URL+"/auth/logout"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	c2 := browser()
	if resp := login(t, c2, op, site.URL, "/"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow: login after logout: %d", resp.StatusCode)
	}
	if s, m := pollDevice(t, site.URL, d.DeviceCode); s == 200 {
		t.Fatalf("a device code approved before the logout still mints an AZAT after it: %v", m["token_type"])
	} else if s != http.StatusBadRequest || m["error"] != "access_denied" {
		t.Fatalf("poll after logout: %d %v, want 400 access_denied", s, m)
	}
	if s, m := pollDevice(t, site.URL, d.DeviceCode); s != http.StatusBadRequest || m["error"] != "invalid_grant" {
		t.Fatalf("the withdrawn code is still stored: %d %v", s, m)
	}
	// Legitimate flow: a code approved after the new login mints.
	d2 := startDevice(t, site.URL)
	if resp := decide(t, c2, site.URL, d2.UserCode, "approve"); resp.StatusCode != 200 {
		t.Fatalf("approve after re-login: %d", resp.StatusCode)
	}
	if s, m := pollDevice(t, site.URL, d2.DeviceCode); s != 200 || m["access_token"] == nil {
		t.Fatalf("code approved after re-login: %d %v", s, m)
	}
}

// TestDeviceApprovalEndsWithRevoke (red team): POST /auth/revoke ("end
// every AZAT of the caller") moves the jti window, but an approved, not yet
// polled device code used to mint the next jti, which is valid: the
// attacker who phished the approval polled after the user's revoke and got
// a working AZAT. Now the poll gets access_denied (the grant's MinJTI moved
// since the approval); a code approved after the revoke works.
func TestDeviceApprovalEndsWithRevoke(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	d := startDevice(t, site.URL)
	if resp := decide(t, c, site.URL, d.UserCode, "approve"); resp.StatusCode != 200 {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
	if resp := do(t, c, "POST", site.URL+"/auth/revoke", "Sec-Fetch-Site", "same-origin"); resp.StatusCode != 200 {
		t.Fatalf("revoke: %d %s", resp.StatusCode, body(t, resp))
	}
	s, m := pollDevice(t, site.URL, d.DeviceCode)
	if s == 200 {
		tok, _ := m["access_token"].(string)
		if resp := get(t, browser(), site.URL+"/files/x", "Authorization", "Bearer "+tok); resp.StatusCode == 200 {
			t.Fatal("after POST /auth/revoke, a device code approved before it mints an AZAT that works")
		}
	}
	if s != http.StatusBadRequest || m["error"] != "access_denied" {
		t.Fatalf("poll after revoke: %d %v, want 400 access_denied", s, m)
	}
	// Legitimate flow: a code approved after the revoke mints a working AZAT.
	d2 := startDevice(t, site.URL)
	if resp := decide(t, c, site.URL, d2.UserCode, "approve"); resp.StatusCode != 200 {
		t.Fatalf("approve after revoke: %d", resp.StatusCode)
	}
	s, m = pollDevice(t, site.URL, d2.DeviceCode)
	tok, _ := m["access_token"].(string)
	if s != 200 || tok == "" {
		t.Fatalf("code approved after the revoke: %d %v", s, m)
	}
	if resp := get(t, browser(), site.URL+"/files/x", "Authorization", "Bearer "+tok); resp.StatusCode != 200 {
		t.Fatalf("AZAT of a code approved after the revoke: %d", resp.StatusCode)
	}
}

// TestRedteamLoginMarkerFloodLocksOutLogins: the used-state markers
// (usedStates, 100 000 entries of 5 minutes) are claimed as soon as a
// callback's flow cookie opens, before the provider is involved. Anyone can
// get a valid flow cookie from GET /auth/login, so one unauthenticated
// client sending login + callback pairs (no provider login, no code) fills
// the map in seconds; issue 9's "refuse new logins rather than drop live
// markers" then refuses every real user's login with 503 for five minutes,
// renewable at will. A marker should be claimed only for a callback that
// carries a code (and after the exchange succeeds or the provider refused
// it), or be bounded per client.
func TestRedteamLoginMarkerFloodLocksOutLogins(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	const markers = 100000 // maxLoginMarkers (module.go)
	tr := &http.Transport{MaxIdleConnsPerHost: 8}
	t.Cleanup(tr.CloseIdleConnections)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &http.Client{Transport: tr, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
			for next.Add(1) <= markers {
				resp, err := c.Get(site.URL + "/auth/login")
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				loc, err := resp.Location()
				if err != nil {
					t.Error(err)
					return
				}
				req, _ := http.NewRequest("GET", site.URL+"/auth/callback?state="+url.QueryEscape(loc.Query().Get("state")), nil)
				for _, ck := range resp.Cookies() {
					req.AddCookie(ck)
				}
				r2, err := c.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				r2.Body.Close()
			}
		}()
	}
	wg.Wait()
	// A real user now logs in at the provider and comes back with a code.
	c := browser()
	resp := get(t, c, site.URL+"/", navigate...)
	loginURL, _ := resp.Location()
	cb, err := op.Login(context.Background(), c, loginURL.String(), testop.Username, testop.Password)
	if err != nil {
		t.Fatal(err)
	}
	if resp := get(t, c, cb, navigate...); resp.StatusCode != http.StatusFound {
		t.Fatalf("after an unauthenticated flood of code-less callbacks, a real login is refused: %d %s", resp.StatusCode, body(t, resp))
	}
}

// TestRedteamBackchannelLogoutResurrectedByOtherInstance: `session store`
// with `azat` (defaults: a back-channel logout keeps the grant unless
// backchannel_revoke_azat). The provider's back-channel logout deletes the
// user's stored sessions and their index entries. Instance B, still holding
// the session in its session cache, refreshes it through the grant and
// stores it again, now without any sid/sub index entry: every instance
// accepts it until session_lifetime, and a repeated back-channel logout
// cannot find it any more.
func TestRedteamBackchannelLogoutResurrectedByOtherInstance(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: time.Minute})
	up := newUpstream(t)
	block := oidcBlock(op, "namespace shared", "session store", "session_cache 1m", "refresh_before 10m", "azat")
	a, b := twoSites(t, up, block, block)
	c := browser()
	login(t, c, op, a, "/")
	thiefA := copyCookies(t, c, a, a, nil)
	thiefA2 := copyCookies(t, c, a, a, nil)
	thiefB := copyCookies(t, c, a, b, nil)
	if resp := get(t, thiefB, b+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow: instance B: %d", resp.StatusCode)
	}
	logoutToken := func() string {
		now := time.Now()
		tok, err := op.SignJWT(map[string]any{"iss": op.Issuer, "aud": testop.WebClientID, "iat": now.Unix(),
			"exp": now.Add(2 * time.Minute).Unix(), "jti": "rt-" + itoa(int(now.UnixNano()%1e12)), "sub": testop.UserID,
			"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}},
			map[string]any{"typ": "logout+jwt"})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	if code := postLogoutToken(t, a, logoutToken()); code != 200 {
		t.Fatalf("back-channel logout: %d", code)
	}
	if resp := get(t, thiefA, a+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("A right after the back-channel logout: %d", resp.StatusCode)
	}
	_ = get(t, thiefB, b+"/api") // within B's session cache
	if code := postLogoutToken(t, a, logoutToken()); code != 200 {
		t.Fatalf("second back-channel logout: %d", code)
	}
	if resp := get(t, thiefA2, a+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a back-channel-logged-out session was stored again by instance B and survives even a second back-channel logout: %d", resp.StatusCode)
	}
}

// TestRedteamBackchannelLogoutMissesOtherSessionMode: one namespace (one
// provider client, so one back-channel logout URI at the provider), two
// handlers with different `session` modes: a rolling change from `session
// cookie` to `session store`, or two sites sharing a namespace. The
// provider delivers the back-channel logout to the cookie-mode handler,
// which only writes a revocation; the store-mode handler never reads
// revocations, and its stored sessions (with their index entries) are not
// looked at. The user's session at B survives the provider's logout.
func TestRedteamBackchannelLogoutMissesOtherSessionMode(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	a, b := twoSites(t, up, oidcBlock(op, "namespace shared", "session cookie"), oidcBlock(op, "namespace shared", "session store"))
	c := browser()
	login(t, c, op, b, "/")
	if resp := get(t, c, b+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow at B: %d", resp.StatusCode)
	}
	now := time.Now()
	tok, err := op.SignJWT(map[string]any{"iss": op.Issuer, "aud": testop.WebClientID, "iat": now.Unix(),
		"exp": now.Add(2 * time.Minute).Unix(), "jti": "rt-mode-" + itoa(int(now.UnixNano()%1e12)), "sub": testop.UserID,
		"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}},
		map[string]any{"typ": "logout+jwt"})
	if err != nil {
		t.Fatal(err)
	}
	if code := postLogoutToken(t, a, tok); code != 200 {
		t.Fatalf("back-channel logout at A: %d", code)
	}
	// B may serve its cached copy for session_cache (1 s), no longer.
	deadline := time.Now().Add(3 * time.Second)
	for {
		resp := get(t, c, b+"/api")
		if resp.StatusCode == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the provider's back-channel logout (delivered to A, cookie mode) left the user's stored session at B (same namespace) alive: %d", resp.StatusCode)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestDeviceCrossSiteLinksNeverLockOut (red team): GET
// /auth/device?user_code=X (the verification_uri_complete shape) used to
// count a wrong code for the logged-in user when X is not pending, with no
// CSRF token and whatever Sec-Fetch-Site says. Any web page the user visits
// could open ten such top-level navigations (SameSite=Lax cookies ride
// along) and lock the user out of approving their real device for ten
// minutes (429). Now only CSRF-checked POSTs spend that budget (link misses
// have their own, which only costs a click: TestDeviceLinkMissesBounded).
func TestDeviceCrossSiteLinksNeverLockOut(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	for range 10 {
		_ = get(t, c, site.URL+"/auth/device?user_code=BCDF-GHJK", "Accept", "text/html",
			"Sec-Fetch-Mode", "navigate", "Sec-Fetch-Site", "cross-site")
	}
	d := startDevice(t, site.URL)
	resp := get(t, c, site.URL+"/auth/device?user_code="+url.QueryEscape(d.UserCode), navigate...)
	if resp.StatusCode == http.StatusTooManyRequests {
		t.Fatal("cross-site navigations by another page used up the user's wrong-code budget: their own device code gets 429")
	}
}
