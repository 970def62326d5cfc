package caddyoidc_test

import (
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

func postLogoutToken(t *testing.T, site, token string) int {
	t.Helper()
	resp, err := http.PostForm(site+"/auth/backchannel-logout", url.Values{"logout_token": {token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestBackchannelLogout(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			op := startOP(t, testop.Options{})
			up := newUpstream(t)
			id, secret := op.WebClient()
			pa, pb := freePort(t), freePort(t)
			a, b := "http://127.0.0.1:"+itoa(pa), "http://127.0.0.1:"+itoa(pb)
			block := "oidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + id + "\n\t\tclient_secret " + secret +
				"\n\t\tscopes openid profile email offline_access\n\t\tsession " + mode +
				"\n\t\tnamespace shared\n\t}\n\treverse_proxy " + strings.TrimPrefix(up.URL, "http://")
			// Two sites with one storage and one namespace: two instances of
			// the handler in one trust domain.
			loadCaddyfile(t, "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system "+t.TempDir()+
				"\n}\n"+a+" {\n\t"+block+"\n}\n"+b+" {\n\t"+block+"\n}\n")
			c := browser() // cookies are per host, not port: the same session reaches both
			login(t, c, op, a, "/")
			for _, s := range []string{a, b} {
				if resp := get(t, c, s+"/api"); resp.StatusCode != 200 {
					t.Fatalf("%s before logout: %d", s, resp.StatusCode)
				}
			}
			now := time.Now()
			claims := func(mut func(map[string]any)) map[string]any {
				m := map[string]any{"iss": op.Issuer, "aud": id, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
					"jti": uuid.NewString(), "sub": testop.UserID,
					"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}}
				if mut != nil {
					mut(m)
				}
				return m
			}
			sign := func(c map[string]any, hdr map[string]any) string {
				tok, err := op.SignJWT(c, hdr)
				if err != nil {
					t.Fatal(err)
				}
				return tok
			}
			enc := base64.RawURLEncoding.EncodeToString
			unsigned := func(alg string) string {
				h, _ := json.Marshal(map[string]any{"alg": alg, "typ": "logout+jwt"})
				p, _ := json.Marshal(claims(nil))
				return enc(h) + "." + enc(p) + "." + enc([]byte("sig"))
			}
			bad := []struct{ name, token string }{
				{"alg none", unsigned("none")},
				{"wrong alg (HS256)", unsigned("HS256")},
				{"wrong aud", sign(claims(func(m map[string]any) { m["aud"] = "other" }), nil)},
				{"wrong iss", sign(claims(func(m map[string]any) { m["iss"] = "https://evil.example" }), nil)},
				{"no events", sign(claims(func(m map[string]any) { delete(m, "events") }), nil)},
				{"wrong event", sign(claims(func(m map[string]any) {
					m["events"] = map[string]any{"http://schemas.openid.net/event/other": map[string]any{}}
				}), nil)},
				{"nonce present", sign(claims(func(m map[string]any) { m["nonce"] = "n" }), nil)},
				{"neither sid nor sub", sign(claims(func(m map[string]any) { delete(m, "sub") }), nil)},
				{"no iat", sign(claims(func(m map[string]any) { delete(m, "iat") }), nil)},
				{"no jti", sign(claims(func(m map[string]any) { delete(m, "jti") }), nil)},
				{"expired", sign(claims(func(m map[string]any) { m["exp"] = now.Add(-time.Minute).Unix() }), nil)},
				{"tampered", func() string {
					p := strings.Split(sign(claims(nil), nil), ".")
					pl, _ := json.Marshal(claims(func(m map[string]any) { m["sub"] = "id2" }))
					return p[0] + "." + enc(pl) + "." + p[2]
				}()},
				{"empty", ""},
			}
			for _, tt := range bad {
				if s := postLogoutToken(t, a, tt.token); s != http.StatusBadRequest {
					t.Errorf("%s: status %d, want 400", tt.name, s)
				}
			}
			if resp := get(t, c, b+"/api"); resp.StatusCode != 200 {
				t.Fatalf("a rejected logout token ended the session: %d", resp.StatusCode)
			}

			valid := sign(claims(nil), map[string]any{"typ": "logout+jwt"})
			if s := postLogoutToken(t, a, valid); s != 200 {
				t.Fatalf("valid logout token: %d", s)
			}
			// Replays are refused on every instance (the marker is in storage).
			for _, s := range []string{a, b} {
				if code := postLogoutToken(t, s, valid); code != http.StatusBadRequest {
					t.Fatalf("replayed logout token at %s: %d", s, code)
				}
			}
			// Ended on both instances (the other within its reload period).
			for _, s := range []string{a, b} {
				deadline := time.Now().Add(8 * time.Second)
				for {
					resp := get(t, c, s+"/api")
					if resp.StatusCode == 401 {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("%s after back-channel logout: %d", s, resp.StatusCode)
					}
					time.Sleep(250 * time.Millisecond)
				}
			}
			// A new login works.
			c2 := browser()
			if resp := login(t, c2, op, b, "/"); resp.StatusCode != 200 {
				t.Fatalf("login after back-channel logout: %d", resp.StatusCode)
			}
		})
	}
}

// TestBackchannelLogoutRetried: the provider's delivery fails on a storage
// outage (503, nothing ended, no replay marker); its retry of the same
// logout token is heard once storage is back, and ends the session. A
// sub-only logout ends the sessions created before it, not a login made
// right after it (the same second).
func TestBackchannelLogoutRetried(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	id, secret := op.WebClient()
	site := "http://127.0.0.1:" + itoa(freePort(t))
	loadCaddyfile(t, "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage failing_test "+t.TempDir()+"\n}\n"+
		site+" {\n\toidc {\n\t\tissuer "+op.Issuer+"\n\t\tclient_id "+id+"\n\t\tclient_secret "+secret+
		"\n\t}\n\treverse_proxy "+strings.TrimPrefix(up.URL, "http://")+"\n}\n")
	t.Cleanup(func() { storageFaults.store.Store(false) })
	c := browser()
	login(t, c, op, site, "/")
	now := time.Now()
	tok, err := op.SignJWT(map[string]any{"iss": op.Issuer, "aud": id, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
		"jti": uuid.NewString(), "sub": testop.UserID,
		"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}},
		map[string]any{"typ": "logout+jwt"})
	if err != nil {
		t.Fatal(err)
	}
	storageFaults.store.Store(true)
	if code := postLogoutToken(t, site, tok); code != http.StatusServiceUnavailable {
		t.Fatalf("delivery during a storage outage: %d, want 503", code)
	}
	storageFaults.store.Store(false)
	if resp := get(t, c, site+"/api"); resp.StatusCode != 200 {
		t.Fatalf("a failed delivery ended the session: %d", resp.StatusCode)
	}
	if code := postLogoutToken(t, site, tok); code != 200 {
		t.Fatalf("retried delivery: %d, want 200", code)
	}
	if resp := get(t, c, site+"/api"); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("after the retried logout: %d", resp.StatusCode)
	}
	c2 := browser()
	if resp := login(t, c2, op, site, "/"); resp.StatusCode != 200 {
		t.Fatalf("login right after the logout: %d", resp.StatusCode)
	}
	if resp := get(t, c2, site+"/api"); resp.StatusCode != 200 {
		t.Fatalf("a login made after the sub logout was ended: %d", resp.StatusCode)
	}
}
