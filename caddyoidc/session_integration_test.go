package caddyoidc_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

func TestExposeTokens(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "expose_tokens"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	u, _ := url.Parse(site.URL)
	found := map[string]*http.Cookie{}
	for _, ck := range c.Jar.Cookies(u) {
		found[ck.Name] = ck
	}
	at, it := found["caddy_oidc_access_token"], found["caddy_oidc_id_token"]
	if at == nil || it == nil || !strings.HasPrefix(at.Value, "ey") || !strings.HasPrefix(it.Value, "ey") {
		t.Fatalf("exposed token cookies missing: %v", found)
	}
	// The refresh token is never exposed: the only other cookies are sealed.
	for name, ck := range found {
		if name != "caddy_oidc_access_token" && name != "caddy_oidc_id_token" && strings.HasPrefix(ck.Value, "ey") {
			t.Fatalf("cookie %s carries a readable token", name)
		}
	}
	// The SPA calls the API with the exposed access token.
	if resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+at.Value); resp.StatusCode != 200 {
		t.Fatalf("exposed access token as bearer: %d", resp.StatusCode)
	}
}

// TestPlaceholders: {http.auth.user.*} can be used by other directives.
func TestPlaceholders(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	id, secret := op.WebClient()
	port := freePort(t)
	cf := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s
}
http://127.0.0.1:%d {
	oidc {
		issuer %s
		client_id %s
		client_secret %s
	}
	reverse_proxy %s {
		header_up X-Remote-User {http.auth.user.id}
		header_up X-Remote-Email {http.auth.user.email}
		header_up X-Remote-Roles {http.auth.user.roles}
		header_up X-Remote-Name {http.auth.user.claims.name}
	}
}`, t.TempDir(), port, op.Issuer, id, secret, strings.TrimPrefix(up.URL, "http://"))
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	login(t, browser(), op, site, "/")
	h := up.header()
	want := map[string]string{"X-Remote-User": "id1", "X-Remote-Email": "test-user@zitadel.ch",
		"X-Remote-Roles": "admin,users", "X-Remote-Name": "Test User"}
	for k, v := range want {
		if h.Get(k) != v {
			t.Errorf("%s = %q, want %q", k, h.Get(k), v)
		}
	}
}

// TestSessionsSurviveRestart: the generated cookie secret is kept in storage.
func TestSessionsSurviveRestart(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			op := startOP(t, testop.Options{})
			up := newUpstream(t)
			dir := t.TempDir()
			// A new port is another site address: the namespace option
			// keeps the restarted site in the same trust domain.
			block := oidcBlock(op, "session "+mode+"\n\t\tnamespace restarted")
			site := startCaddy(t, block, up, dir)
			c := browser()
			login(t, c, op, site.URL, "/")
			_ = caddy.Stop()
			// Same storage, new process state, new port: cookies are host-only
			// per host (not per port), so the jar sends them again.
			site2 := startCaddy(t, block, up, dir)
			resp := get(t, c, site2.URL+"/api")
			if resp.StatusCode != 200 {
				t.Fatalf("after restart: %d", resp.StatusCode)
			}
			var got map[string]string
			_ = json.NewDecoder(resp.Body).Decode(&got)
			if got["user"] != testop.UserID {
				t.Fatalf("user %q", got["user"])
			}
		})
	}
}

// TestStoredSessionIsSealed: with session store, the cookie holds only a
// sealed id and storage holds no token in clear.
func TestStoredSessionIsSealed(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	dir := t.TempDir()
	site := startCaddy(t, oidcBlock(op, "session store"), up, dir)
	c := browser()
	login(t, c, op, site.URL, "/")
	u, _ := url.Parse(site.URL)
	for _, ck := range c.Jar.Cookies(u) {
		if len(ck.Value) > 200 {
			t.Fatalf("store mode cookie %s is %d bytes: tokens in the cookie?", ck.Name, len(ck.Value))
		}
	}
	access := strings.TrimPrefix(up.header().Get("Authorization"), "Bearer ")
	if access == "" {
		t.Fatal("no access token upstream")
	}
	if found := grepDir(t, dir, access[len(access)-20:]); found != "" {
		t.Fatalf("access token in clear in storage file %s", found)
	}
	// Logout deletes the stored session: the old cookie is dead everywhere.
	saved := c.Jar.Cookies(u)
	do(t, c, "POST", site.URL+"/auth/logout", "Sec-Fetch-Site", "same-origin")
	replay := browser()
	replay.Jar.SetCookies(u, saved)
	if resp := get(t, replay, site.URL+"/api"); resp.StatusCode != 401 {
		t.Fatalf("replayed cookie after logout: %d", resp.StatusCode)
	}
}
