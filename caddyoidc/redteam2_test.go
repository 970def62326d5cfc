package caddyoidc_test

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// Second red-team pass. Each test is the attack and fails while the
// weakness is there.

// TestRedteam2LogoutWithFourTossedChunksEndsNothing: the fix for a tossed
// duplicate chunk (logoutSessions -> chunkCandidates) keeps at most 4
// values per chunk index, the first ones in the Cookie header. A sibling
// subdomain tosses four caddy_oidc_0 cookies under a longer Path (browsers
// send cookies with longer paths first, RFC 6265 §5.4): the real chunk is
// the fifth value and is never tried, so POST /auth/logout ends nothing,
// clears the browser's cookies and answers "logged out" while a copy of
// the session keeps working. Logout must end the real session (or refuse
// with an error), never report success while it lives on.
func TestRedteam2LogoutWithFourTossedChunksEndsNothing(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	thief := copyCookies(t, c, site.URL, site.URL, nil)
	if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("legitimate flow: copy before logout: %d", resp.StatusCode)
	}
	// The jar appends the real cookies after these: five caddy_oidc_0.
	tossed := "caddy_oidc_0=t1; caddy_oidc_0=t2; caddy_oidc_0=t3; caddy_oidc_0=t4"
	resp := do(t, c, "POST", site.URL+"/auth/logout", "Cookie", tossed)
	loc, _ := resp.Location()
	t.Logf("logout answered %d to %v", resp.StatusCode, loc)
	if resp.StatusCode == http.StatusSeeOther && strings.HasSuffix(loc.Path, "/logged-out") {
		if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
			t.Fatalf("logout with four tossed chunks reported success but the session lives on: copy answers %d", resp.StatusCode)
		}
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
