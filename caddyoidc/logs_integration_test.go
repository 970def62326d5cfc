package caddyoidc_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// TestNoSecretsInLogs runs every flow with debug logging (and an access log
// with the query filter README recommends) and checks that no token, code,
// cookie value, cookie secret or client secret appears in any log line.
func TestNoSecretsInLogs(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	up := newUpstream(t)
	id, secret := op.WebClient()
	dir := t.TempDir()
	debugLog, accessLog := filepath.Join(dir, "debug.log"), filepath.Join(dir, "access.log")
	cookieSecret := "cookie-secret-0123456789-abcdefghijklmnop"
	port := freePort(t)
	site := "http://127.0.0.1:" + itoa(port)
	cf := `{
	admin off
	persist_config off
	auto_https off
	storage file_system ` + filepath.Join(dir, "storage") + `
	log {
		output file ` + debugLog + `
		level DEBUG
	}
}
` + site + ` {
	log {
		output file ` + accessLog + `
		format filter {
			request>uri query {
				delete code
				delete state
			}
			wrap json
		}
	}
	oidc {
		issuer ` + op.Issuer + `
		client_id ` + id + `
		client_secret ` + secret + `
		cookie_secret ` + cookieSecret + `
		scopes openid profile email offline_access
		refresh_before 1s
		azat
	}
	reverse_proxy ` + strings.TrimPrefix(up.URL, "http://") + `
}`
	loadCaddyfile(t, cf)

	var secrets []string
	c := browser()
	resp := get(t, c, site+"/auth/login?back=/", navigate...)
	authz, _ := resp.Location()
	cb, err := op.Login(context.Background(), c, authz.String(), testop.Username, testop.Password)
	if err != nil {
		t.Fatal(err)
	}
	cbURL, _ := url.Parse(cb)
	secrets = append(secrets, cbURL.Query().Get("code"))
	get(t, c, cb, navigate...)
	get(t, c, site+"/api")
	secrets = append(secrets, strings.TrimPrefix(up.header().Get("Authorization"), "Bearer "))
	u, _ := url.Parse(site)
	for _, ck := range c.Jar.Cookies(u) {
		secrets = append(secrets, ck.Value)
	}
	resp = do(t, c, "POST", site+"/auth/refresh")
	var r map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&r)
	secrets = append(secrets, r["access_token"].(string), r["id_token"].(string))
	m := mintAZAT(t, c, site)
	secrets = append(secrets, m.Token)
	time.Sleep(2500 * time.Millisecond)
	get(t, browser(), site+"/files/a", "Authorization", "Bearer "+m.Token)
	secrets = append(secrets, strings.TrimPrefix(up.header().Get("Authorization"), "Bearer "))
	svc, _ := op.ClientCredentialsToken(context.Background(), testop.AudienceScopePrefix+"web")
	get(t, browser(), site+"/api", "Authorization", "Bearer "+svc.AccessToken)
	get(t, browser(), site+"/api", "Authorization", "Bearer "+svc.AccessToken+"x") // rejected
	get(t, browser(), site+"/auth/callback?state="+strings.Repeat("s", 43)+"&code=leaked-code-value", navigate...)
	do(t, c, "POST", site+"/auth/revoke")
	do(t, c, "POST", site+"/auth/logout", "Sec-Fetch-Site", "same-origin")
	secrets = append(secrets, svc.AccessToken, secret, cookieSecret, "leaked-code-value")

	time.Sleep(200 * time.Millisecond) // log writers flush
	logs := ""
	for _, f := range []string{debugLog, accessLog} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Fatalf("%s is empty: the test would prove nothing", f)
		}
		logs += string(b)
	}
	if !strings.Contains(logs, "http.handlers.oidc") || !strings.Contains(logs, `"level":"debug"`) {
		t.Fatal("debug logs of the module missing")
	}
	for _, s := range secrets {
		if len(s) < 8 {
			t.Fatalf("secret %q too short to search for", s)
		}
		// Search for a distinctive part too: a log line might cut a token.
		for _, needle := range []string{s, s[len(s)/2:]} {
			if len(needle) >= 16 && strings.Contains(logs, needle) {
				t.Errorf("a secret (%.6s...) appears in the logs", s)
			}
		}
	}
}

// TestAdminConfigKeepsPlaceholders: secrets given as placeholders are
// resolved at provisioning, and the running configuration served by Caddy's
// admin API still shows only the placeholders.
func TestAdminConfigKeepsPlaceholders(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	id, secret := op.WebClient()
	secrets := map[string]string{
		"TEST_OIDC_CLIENT_SECRET": secret,
		"TEST_OIDC_COOKIE_SECRET": "cookie-secret-from-env-0123456789abcdef",
		"TEST_AZAT_GRANT_SECRET":  "grant-secret-from-env-0123456789abcdefgh",
	}
	for k, v := range secrets {
		t.Setenv(k, v)
	}
	admin := "127.0.0.1:" + itoa(freePort(t))
	site := "http://127.0.0.1:" + itoa(freePort(t))
	loadCaddyfile(t, `{
	admin `+admin+`
	persist_config off
	auto_https off
	storage file_system `+t.TempDir()+`
}
`+site+` {
	oidc {
		issuer `+op.Issuer+`
		client_id `+id+`
		client_secret {env.TEST_OIDC_CLIENT_SECRET}
		cookie_secret {env.TEST_OIDC_COOKIE_SECRET}
		scopes openid profile email offline_access
		azat {
			grant_secret {env.TEST_AZAT_GRANT_SECRET}
		}
	}
	reverse_proxy `+strings.TrimPrefix(up.URL, "http://")+`
}`)
	// The secrets work: a login succeeds (client secret, cookie secret) and
	// mints an AZAT (grant secret).
	c := browser()
	login(t, c, op, site, "/")
	if resp := get(t, c, site+"/auth/token"); resp.StatusCode != 200 {
		t.Fatalf("token: %d %s", resp.StatusCode, body(t, resp))
	}
	resp, err := http.Get("http://" + admin + "/config/")
	if err != nil {
		t.Fatal(err)
	}
	cfg := body(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(cfg, `"handler":"oidc"`) {
		t.Fatalf("admin /config/: %d %s", resp.StatusCode, cfg)
	}
	for k, v := range secrets {
		if strings.Contains(cfg, v) {
			t.Errorf("the admin config shows the value of %s", k)
		}
		if !strings.Contains(cfg, "{env."+k+"}") {
			t.Errorf("the admin config lost the placeholder {env.%s}", k)
		}
	}
}
