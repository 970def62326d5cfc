package caddyoidc_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// Second red-team pass. Each test is the attack and fails while the
// weakness is there.

// TestRedteam2LogoutWithTossedChunksEndsNothing: the fix for a tossed
// duplicate chunk (logoutSessions -> chunkCandidates) tries only some of
// the values the chunks could form. A sibling subdomain (cookie_domain, or
// no __Host- over plain HTTP) tosses in
//   - four caddy_oidc_0 under a longer Path (browsers send cookies with
//     longer paths first, RFC 6265 §5.4): at most 4 values per index are
//     kept, the first ones, so the real chunk is never tried;
//   - one caddy_oidc_1 beside a one-chunk session: every candidate is the
//     real chunk followed by the junk one, which opens nothing.
//
// POST /auth/logout then ends nothing, clears the browser's cookies and
// answers "logged out" while a copy of the session keeps working. Logout
// must end the real session (or refuse with an error), never report
// success while it lives on.
func TestRedteam2LogoutWithTossedChunksEndsNothing(t *testing.T) {
	for _, tt := range []struct{ name, tossed string }{
		{"four duplicates first", "caddy_oidc_0=t1; caddy_oidc_0=t2; caddy_oidc_0=t3; caddy_oidc_0=t4"},
		{"a junk next chunk", "caddy_oidc_1=junk"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			op := startOP(t, testop.Options{})
			up := newUpstream(t)
			site := startCaddy(t, oidcBlock(op, "azat"), up, "")
			c := browser()
			login(t, c, op, site.URL, "/")
			thief := copyCookies(t, c, site.URL, site.URL, nil)
			if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != 200 {
				t.Fatalf("legitimate flow: copy before logout: %d", resp.StatusCode)
			}
			// The jar appends the real cookies after the tossed ones.
			resp := do(t, c, "POST", site.URL+"/auth/logout", "Cookie", tt.tossed)
			loc, _ := resp.Location()
			t.Logf("logout answered %d to %v", resp.StatusCode, loc)
			if resp.StatusCode == http.StatusSeeOther && strings.HasSuffix(loc.Path, "/logged-out") {
				if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("logout with tossed chunks (%s) reported success but the session lives on: copy answers %d", tt.tossed, resp.StatusCode)
				}
			}
		})
	}
}

// TestRedteam2SecondSubLogoutMissedByOtherInstances: cookie sessions, two
// instances of one namespace. A back-channel logout naming only the user
// (sub) is stored as revocations/sub-<hash(iss, sub)>, one key per user. A
// second sub logout of the same user (the account was taken over again,
// an admin's "sign out everywhere") overwrites that record with a later
// time, but loadRevocations loads each storage key only once
// (incremental: rv.known), so every other instance keeps the first time
// and goes on accepting the sessions created between the two logouts, for
// as long as the first record lives (session_lifetime).
func TestRedteam2SecondSubLogoutMissedByOtherInstances(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	id, _ := op.WebClient()
	block := oidcBlock(op, "namespace shared")
	a, b := twoSites(t, up, block, block)
	logout := func() {
		t.Helper()
		now := time.Now()
		tok, err := op.SignJWT(map[string]any{"iss": op.Issuer, "aud": id, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
			"jti": uuid.NewString(), "sub": testop.UserID,
			"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}},
			map[string]any{"typ": "logout+jwt"})
		if err != nil {
			t.Fatal(err)
		}
		if s := postLogoutToken(t, a, tok); s != 200 {
			t.Fatalf("back-channel logout: %d", s)
		}
	}
	// waitRefused polls c at site until it is refused, at most within
	// deadline (the other instance reloads revocations every 5 s).
	waitRefused := func(c *http.Client, site string, d time.Duration) bool {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			if resp := get(t, c, site+"/api"); resp.StatusCode == http.StatusUnauthorized {
				return true
			}
			if time.Now().After(deadline) {
				return false
			}
			time.Sleep(250 * time.Millisecond)
		}
	}

	first := browser()
	login(t, first, op, a, "/")
	if resp := get(t, first, b+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow: instance B: %d", resp.StatusCode)
	}
	logout()
	if !waitRefused(first, b, 8*time.Second) {
		t.Fatal("first sub logout not applied by instance B within 8 s")
	}

	// A login after the first logout, ended by a second one.
	second := browser()
	login(t, second, op, a, "/")
	atB := copyCookies(t, second, a, b, nil)
	if resp := get(t, atB, b+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow: a login after the first logout at B: %d", resp.StatusCode)
	}
	logout()
	if !waitRefused(second, a, 0) {
		t.Fatal("second sub logout not applied by the instance that received it")
	}
	if !waitRefused(atB, b, 12*time.Second) {
		t.Fatal("a second back-channel logout of the same user is never seen by the other instance: its session lives on there")
	}
}

// loginAs is login for another test user, starting at <routes>/login.
func loginAs(t *testing.T, c *http.Client, op *testop.OP, site, user, password string) {
	t.Helper()
	cb, err := op.Login(context.Background(), c, site+"/auth/login", user, password)
	if err != nil {
		t.Fatalf("login at the OP: %v", err)
	}
	if resp := get(t, c, cb, navigate...); resp.StatusCode != http.StatusFound {
		t.Fatalf("callback: status %d: %s", resp.StatusCode, body(t, resp))
	}
}

// TestRedteam2LogoutEndsTheTossedSessionAtTheProvider: a sibling
// subdomain tosses the attacker's own (valid) session chunk into the
// victim's browser. The victim's logout ends every candidate session
// locally (the fix), but sends the provider the id_token_hint of
// sessions[0], the first cookie in the header: the attacker's. The
// provider ends the attacker's session (or refuses the hint) and the
// victim's single sign-on session lives on: on a shared computer the next
// person to press "log in" is the victim without a password, and the log
// line names the attacker. The RP-initiated logout must name the session
// the browser's real cookie opens (or the victim's, never a stranger's).
func TestRedteam2LogoutEndsTheTossedSessionAtTheProvider(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")
	victim, attacker := browser(), browser()
	login(t, victim, op, site.URL, "/")
	loginAs(t, attacker, op, site.URL, testop.Username2, testop.Password2)
	u, _ := url.Parse(site.URL)
	var tossed string
	for _, ck := range attacker.Jar.Cookies(u) {
		if ck.Name == "caddy_oidc_0" {
			tossed = ck.Value
		}
	}
	if tossed == "" {
		t.Fatal("attacker has no session cookie")
	}
	hintSub := func(resp *http.Response) string {
		t.Helper()
		loc, err := resp.Location()
		if err != nil {
			t.Fatalf("logout: %d, no Location", resp.StatusCode)
		}
		hint := loc.Query().Get("id_token_hint")
		parts := strings.Split(hint, ".")
		if len(parts) != 3 {
			t.Fatalf("logout went to %s without an id_token_hint", loc)
		}
		b, _ := base64.RawURLEncoding.DecodeString(parts[1])
		var c struct{ Sub string }
		_ = json.Unmarshal(b, &c)
		return c.Sub
	}
	// Legitimate flow: a plain logout (another login of that user) names
	// its own user.
	spare := browser()
	loginAs(t, spare, op, site.URL, testop.Username2, testop.Password2)
	if sub := hintSub(do(t, spare, "POST", site.URL+"/auth/logout")); sub != testop.UserID2 {
		t.Fatalf("legitimate flow: a plain logout names %q", sub)
	}
	// With several candidate sessions the hint is left out (the provider
	// then asks which session to end): it must never name the stranger.
	resp := do(t, victim, "POST", site.URL+"/auth/logout", "Cookie", "caddy_oidc_0="+tossed)
	if loc, err := resp.Location(); err == nil && loc.Query().Get("id_token_hint") == "" {
		return
	}
	if sub := hintSub(resp); sub != testop.UserID {
		t.Fatalf("the victim's logout sent the provider the id_token_hint of %q (the tossed session), not the victim's %q: "+
			"the victim's provider session is not ended", sub, testop.UserID)
	}
}

// TestRedteam2RoleRemovalNeverAppliesOnRefresh: require_role admin. The
// user is removed from their last group at the provider, which then leaves
// the groups claim out of its tokens (as providers do for an empty list).
// A refresh verifies the new ID token but copies back every claim of the
// old identity that the new token lacks (refreshAtIdP: "keep claims that
// only came from userinfo"), the old groups included, so the user keeps
// admin on every refresh until session_lifetime; with azat the grant
// stores the stale claims and its AZATs carry admin too. Removing one of
// two groups works (the claim is present, with the new value).
func TestRedteam2RoleRemovalNeverAppliesOnRefresh(t *testing.T) {
	for _, mode := range []string{"session", "azat"} {
		t.Run(mode, func(t *testing.T) {
			op := startOP(t, testop.Options{})
			up := newUpstream(t)
			extra := []string{"require_role admin"}
			if mode == "azat" {
				extra = append(extra, "azat")
			}
			site := startCaddy(t, oidcBlock(op, extra...), up, "")
			refresh := func(c *http.Client) map[string]any {
				t.Helper()
				resp := do(t, c, "POST", site.URL+"/auth/refresh", "Sec-Fetch-Site", "same-origin")
				if resp.StatusCode != 200 {
					t.Fatalf("refresh: %d %s", resp.StatusCode, body(t, resp))
				}
				var out struct {
					IDToken string `json:"id_token"`
				}
				_ = json.NewDecoder(resp.Body).Decode(&out)
				parts := strings.Split(out.IDToken, ".")
				if len(parts) != 3 {
					t.Fatalf("refresh answered no id token")
				}
				b, _ := base64.RawURLEncoding.DecodeString(parts[1])
				var claims map[string]any
				_ = json.Unmarshal(b, &claims)
				return claims
			}
			// Legitimate flow: admin removed, another group kept: refused.
			c := browser()
			if resp := login(t, c, op, site.URL, "/"); resp.StatusCode != 200 {
				t.Fatalf("admin after login: %d", resp.StatusCode)
			}
			if err := op.SetGroups(testop.Username, []string{"users"}); err != nil {
				t.Fatal(err)
			}
			refresh(c)
			if resp := get(t, c, site.URL+"/api"); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("legitimate flow: admin removed (users kept), after a refresh: %d", resp.StatusCode)
			}
			// The attack: admin was the last group.
			if err := op.SetGroups(testop.Username, []string{"admin"}); err != nil {
				t.Fatal(err)
			}
			c2 := browser()
			if resp := login(t, c2, op, site.URL, "/"); resp.StatusCode != 200 {
				t.Fatalf("admin after login: %d", resp.StatusCode)
			}
			if err := op.SetGroups(testop.Username, nil); err != nil {
				t.Fatal(err)
			}
			if claims := refresh(c2); claims["groups"] != nil {
				t.Fatalf("the provider still asserts groups %v", claims["groups"])
			}
			if resp := get(t, c2, site.URL+"/api"); resp.StatusCode != http.StatusForbidden {
				t.Fatalf("the user was removed from every group at the provider, and after a refresh (whose ID token has no groups) "+
					"still passes require_role admin: %d, groups header %q", resp.StatusCode, up.header().Get("X-Auth-Request-Groups"))
			}
		})
	}
}

// TestRedteam2IDTokenFromLogoutURLMintsAZAT: with bearer_id_token_shaped
// accept (dex), mint_from_bearer and azat { logout keep }, the ID token is
// an access token issued to this client (azp = client_id), so it mints a
// 7-day AZAT. The logout redirect puts that ID token in a URL
// (id_token_hint): browser history, the provider's access log, any proxy
// log. After the user logged out, whoever reads it gets a new AZAT for the
// user. An ID token must never mint (checkIDShape's marker, or its
// at_hash/nonce, should refuse it in serveToken), whatever
// bearer_id_token_shaped says for upstream access.
func TestRedteam2IDTokenFromLogoutURLMintsAZAT(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "bearer_id_token_shaped accept", "mint_from_bearer",
		"azat {\n\t\t\tlogout keep\n\t\t}"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	resp := do(t, c, "POST", site.URL+"/auth/logout")
	loc, err := resp.Location()
	if err != nil {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	idToken := loc.Query().Get("id_token_hint")
	if idToken == "" {
		t.Fatalf("logout went to %s without an id_token_hint", loc)
	}
	// Legitimate flow: the logged-out browser gets no token.
	if resp := get(t, c, site.URL+"/auth/token", "Sec-Fetch-Site", "same-origin"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("legitimate flow: /auth/token after logout: %d", resp.StatusCode)
	}
	resp = get(t, browser(), site.URL+"/auth/token", "Authorization", "Bearer "+idToken)
	if resp.StatusCode == 200 {
		var m struct{ Token string }
		_ = json.NewDecoder(resp.Body).Decode(&m)
		code := get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+m.Token).StatusCode
		t.Fatalf("the ID token from the logout URL minted an AZAT after logout (the AZAT answers %d)", code)
	}
}
