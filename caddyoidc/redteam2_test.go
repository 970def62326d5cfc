package caddyoidc_test

import (
	"net/http"
	"strings"
	"testing"

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
