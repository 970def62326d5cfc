package caddyoidc_test

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// Attacks across trust boundaries: two sites in one Caddy on one storage,
// copies of credentials after logout. Each asserts the safe outcome and that
// the legitimate flow still works.

// twoSites runs one Caddy with sites a and b (loopback, two ports) on one
// storage, each with its own oidc block.
func twoSites(t *testing.T, up *upstream, blockA, blockB string) (a, b string) {
	t.Helper()
	a, b = "http://127.0.0.1:"+itoa(freePort(t)), "http://127.0.0.1:"+itoa(freePort(t))
	proxy := "\n\treverse_proxy " + strings.TrimPrefix(up.URL, "http://") + "\n}\n"
	loadCaddyfile(t, "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system "+t.TempDir()+
		"\n}\n"+a+" {\n\t"+blockA+proxy+b+" {\n\t"+blockB+proxy)
	return a, b
}

// copyCookies gives a fresh client the cookies c holds for site, renamed
// with rename (nil: as they are) and set for target.
func copyCookies(t *testing.T, c *http.Client, site, target string, rename func(string) string) *http.Client {
	t.Helper()
	from, _ := url.Parse(site)
	to, _ := url.Parse(target)
	jar, _ := cookiejar.New(nil)
	var out []*http.Cookie
	for _, ck := range c.Jar.Cookies(from) {
		name := ck.Name
		if rename != nil {
			name = rename(name)
		}
		out = append(out, &http.Cookie{Name: name, Value: ck.Value})
	}
	if len(out) == 0 {
		t.Fatal("no cookies to copy")
	}
	jar.SetCookies(to, out)
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// TestSessionOfAnotherSiteRefused: a session cookie of site A is sent to
// site B of the same Caddy and storage — with the same provider and client,
// and with another client and cookie name. B treats it as no session (and
// mints no AZAT from it); A keeps working.
func TestSessionOfAnotherSiteRefused(t *testing.T) {
	op := startOP(t, testop.Options{})
	otherID, otherSecret := op.OtherClient()
	for _, tt := range []struct {
		name, blockB string
		rename       func(string) string
	}{
		{name: "same provider and client", blockB: oidcBlock(op, "azat")},
		{name: "other client and cookie name", blockB: "oidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + otherID +
			"\n\t\tclient_secret " + otherSecret + "\n\t\tcookie_name other\n\t\tazat\n\t}",
			rename: func(n string) string { return strings.Replace(n, "caddy_oidc", "other", 1) }},
	} {
		for _, mode := range []string{"cookie", "store"} {
			t.Run(tt.name+"/"+mode, func(t *testing.T) {
				up := newUpstream(t)
				blockB := strings.Replace(tt.blockB, "\n\t}", "\n\t\tsession "+mode+"\n\t}", 1)
				a, b := twoSites(t, up, oidcBlock(op, "session "+mode, "azat"), blockB)
				c := browser()
				login(t, c, op, a, "/")
				thief := copyCookies(t, c, a, b, tt.rename)
				if resp := get(t, thief, b+"/api"); resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("site B accepted site A's session: %d", resp.StatusCode)
				}
				if resp := get(t, thief, b+"/auth/token"); resp.StatusCode != http.StatusUnauthorized {
					t.Fatalf("site B minted from site A's session: %d %s", resp.StatusCode, body(t, resp))
				}
				if resp := get(t, c, a+"/api"); resp.StatusCode != 200 {
					t.Fatalf("site A: %d", resp.StatusCode)
				}
			})
		}
	}
}

// TestAZATOfAnotherSiteRefused: an AZAT minted by site A (default issuer,
// the site's address) is presented to site B — another port, same storage,
// same provider and client — naming A's Host: Caddy's host matcher ignores
// the port, so B's handler sees it. B refuses it; A accepts it.
func TestAZATOfAnotherSiteRefused(t *testing.T) {
	op := startOP(t, testop.Options{})
	for _, tt := range []struct{ name, azat string }{
		// iss is each site's own address: B does not take A's token for its own.
		{"default issuer", "azat"},
		// One configured issuer for both: B takes it for its own, and the
		// namespace (signing keys, grants) refuses it.
		{"same configured issuer", "azat {\n\t\t\tissuer http://files.test\n\t\t}"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			up := newUpstream(t)
			a, b := twoSites(t, up, oidcBlock(op, tt.azat), oidcBlock(op, tt.azat))
			c := browser()
			login(t, c, op, a, "/")
			m := mintAZAT(t, c, a)
			for _, host := range []string{strings.TrimPrefix(a, "http://"), ""} {
				req, _ := http.NewRequest("GET", b+"/files/x", nil)
				req.Header.Set("Authorization", "Bearer "+m.Token)
				if host != "" {
					req.Host = host
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				msg := body(t, resp)
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(msg, "invalid_token") {
					t.Fatalf("site B, Host %q: %d %s", host, resp.StatusCode, msg)
				}
			}
			if resp := get(t, browser(), a+"/files/x", "Authorization", "Bearer "+m.Token); resp.StatusCode != 200 {
				t.Fatalf("site A refused its own AZAT: %d", resp.StatusCode)
			}
		})
	}
}

// TestGrantOfAnotherClientUntouched: a login at site B (client "other") does
// not overwrite site A's grant: A's AZAT keeps sending A's tokens upstream.
func TestGrantOfAnotherClientUntouched(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	otherID, otherSecret := op.OtherClient()
	// grant_cache -1s: A reads the grant from storage on every request.
	a, b := twoSites(t, up, oidcBlock(op, "azat {\n\t\t\tgrant_cache -1s\n\t\t}"), "oidc {\n\t\tissuer "+op.Issuer+"\n\t\tclient_id "+otherID+
		"\n\t\tclient_secret "+otherSecret+"\n\t\tscopes openid profile email offline_access\n\t\tazat\n\t}")
	ca := browser()
	login(t, ca, op, a, "/")
	m := mintAZAT(t, ca, a)
	cb := browser()
	login(t, cb, op, b, "/")
	if resp := get(t, browser(), a+"/files/x", "Authorization", "Bearer "+m.Token); resp.StatusCode != 200 {
		t.Fatalf("site A's AZAT after a login at B: %d", resp.StatusCode)
	}
	id, _ := op.WebClient()
	if aud := tokenAudience(t, strings.TrimPrefix(up.header().Get("Authorization"), "Bearer ")); !strings.Contains(aud, id) || strings.Contains(aud, otherID) {
		t.Fatalf("site A's upstream got a token for %q", aud)
	}
}

// TestLogoutEndsCopiedSession: after POST /auth/logout, a copy of the
// session cookie taken before is refused (and cannot refresh) on this
// instance at once, for cookie and stored sessions; with azat, the AZATs
// end too by default and survive with `logout keep`. A new login works.
func TestLogoutEndsCopiedSession(t *testing.T) {
	for _, tt := range []struct {
		name, extra string
		azatAfter   int
	}{
		{name: "cookie", extra: "session cookie"},
		{name: "store", extra: "session store"},
		{name: "cookie+azat", extra: "session cookie\n\t\tazat", azatAfter: 401},
		{name: "store+azat", extra: "session store\n\t\tazat", azatAfter: 401},
		{name: "cookie+azat keep", extra: "session cookie\n\t\tazat {\n\t\t\tlogout keep\n\t\t}", azatAfter: 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			op := startOP(t, testop.Options{})
			up := newUpstream(t)
			site := startCaddy(t, oidcBlock(op, tt.extra), up, "")
			c := browser()
			login(t, c, op, site.URL, "/")
			var m mintedToken
			if tt.azatAfter != 0 {
				m = mintAZAT(t, c, site.URL)
			}
			thief := copyCookies(t, c, site.URL, site.URL, nil)
			if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != 200 {
				t.Fatalf("copy before logout: %d", resp.StatusCode)
			}
			resp := do(t, c, "POST", site.URL+"/auth/logout")
			if resp.StatusCode != http.StatusSeeOther {
				t.Fatalf("logout: %d", resp.StatusCode)
			}
			if resp := get(t, thief, site.URL+"/api"); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("copied cookie after logout: %d", resp.StatusCode)
			}
			if resp := do(t, thief, "POST", site.URL+"/auth/refresh"); resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("refresh with the copied cookie after logout: %d", resp.StatusCode)
			}
			if tt.azatAfter != 0 {
				if resp := get(t, browser(), site.URL+"/files/x", "Authorization", "Bearer "+m.Token); resp.StatusCode != tt.azatAfter {
					t.Fatalf("AZAT after logout: %d, want %d", resp.StatusCode, tt.azatAfter)
				}
			}
			c2 := browser()
			if resp := login(t, c2, op, site.URL, "/"); resp.StatusCode != 200 {
				t.Fatalf("login after logout: %d", resp.StatusCode)
			}
		})
	}
}

// TestLogoutEndsCopiedSessionOnOtherInstance: two instances (sites of one
// namespace) on one storage: a logout at A ends the copied cookie at B
// within the revocation reload period.
func TestLogoutEndsCopiedSessionOnOtherInstance(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	block := oidcBlock(op, "namespace shared")
	a, b := twoSites(t, up, block, block)
	c := browser()
	login(t, c, op, a, "/")
	thief := copyCookies(t, c, a, b, nil)
	if resp := get(t, thief, b+"/api"); resp.StatusCode != 200 {
		t.Fatalf("instance B before logout: %d", resp.StatusCode)
	}
	if resp := do(t, c, "POST", a+"/auth/logout"); resp.StatusCode != http.StatusSeeOther {
		t.Fatalf("logout: %d", resp.StatusCode)
	}
	deadline := time.Now().Add(8 * time.Second) // revocationReload is 5 s
	for {
		resp := get(t, thief, b+"/api")
		if resp.StatusCode == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance B still accepts the copied cookie: %d", resp.StatusCode)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// tokenAudience is the aud claim of a JWT, unverified, as text.
func tokenAudience(t *testing.T, jwt string) string {
	t.Helper()
	parts := strings.Split(jwt, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", jwt)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		Aud any `json:"aud"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprint(c.Aud)
}

// TestDeviceCodeOfAnotherSiteRefused: a device code started at site A
// cannot be approved by a user logged in at site B (same Caddy, storage,
// provider and client): B does not know the code, and A's poll stays
// pending; the code is still approvable at A.
func TestDeviceCodeOfAnotherSiteRefused(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	a, b := twoSites(t, up, oidcBlock(op, "azat"), oidcBlock(op, "azat"))
	d := startDevice(t, a)
	cb := browser()
	login(t, cb, op, b, "/")
	page := get(t, cb, b+"/auth/device?user_code="+url.QueryEscape(d.UserCode), navigate...)
	if text := body(t, page); strings.Contains(text, "test-cli") {
		t.Fatalf("site B shows site A's device request: %s", text)
	}
	if s, m := pollDevice(t, a, d.DeviceCode); s != http.StatusBadRequest || m["error"] != "authorization_pending" {
		t.Fatalf("site A after the attempt at B: %d %v", s, m)
	}
	ca := browser()
	login(t, ca, op, a, "/")
	if resp := decide(t, ca, a, d.UserCode, "approve"); resp.StatusCode >= 400 {
		t.Fatalf("approval at A: %d", resp.StatusCode)
	}
	time.Sleep(time.Duration(d.Interval) * time.Second)
	if s, m := pollDevice(t, a, d.DeviceCode); s != 200 || m["access_token"] == nil {
		t.Fatalf("site A after approval: %d %v", s, m)
	}
}
