package caddyoidc_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

type deviceStart struct {
	DeviceCode              string `json:"device_code"`
	UserCode                string `json:"user_code"`
	VerificationURI         string `json:"verification_uri"`
	VerificationURIComplete string `json:"verification_uri_complete"`
	ExpiresIn               int    `json:"expires_in"`
	Interval                int    `json:"interval"`
}

func startDevice(t *testing.T, site string) deviceStart {
	t.Helper()
	resp, err := http.PostForm(site+"/auth/device/code", url.Values{"client_id": {"test-cli"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var d deviceStart
	if err := json.NewDecoder(resp.Body).Decode(&d); err != nil || resp.StatusCode != 200 {
		t.Fatalf("device code: %d %v", resp.StatusCode, err)
	}
	return d
}

func pollDevice(t *testing.T, site, deviceCode string) (int, map[string]any) {
	t.Helper()
	return pollDeviceAt(t, site+"/auth/device/token", deviceCode)
}

// pollDeviceAt polls the device token endpoint at endpoint.
func pollDeviceAt(t *testing.T, endpoint, deviceCode string) (int, map[string]any) {
	t.Helper()
	resp, err := http.PostForm(endpoint, url.Values{
		"grant_type": {"urn:ietf:params:oauth:grant-type:device_code"}, "device_code": {deviceCode}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&m)
	return resp.StatusCode, m
}

var csrfRe = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// decide approves or denies a user code in the logged-in browser c, typing
// the code into the confirmation field as the user must.
func decide(t *testing.T, c *http.Client, site, userCode, action string) *http.Response {
	t.Helper()
	return decideTyped(t, c, site, userCode, userCode, action)
}

// decideTyped opens the page of userCode (as verification_uri_complete
// does) and posts action with typed in the confirmation field.
func decideTyped(t *testing.T, c *http.Client, site, userCode, typed, action string) *http.Response {
	t.Helper()
	resp := get(t, c, site+"/auth/device?user_code="+url.QueryEscape(userCode), navigate...)
	page := body(t, resp)
	if resp.StatusCode != 200 || !strings.Contains(page, "test-cli") {
		t.Fatalf("device page: %d %s", resp.StatusCode, page)
	}
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatal("no csrf token on the device page")
	}
	form := url.Values{"user_code": {userCode}, "csrf": {htmlUnescape(m[1])}, "action": {action}, "confirm_code": {typed}}
	req, _ := http.NewRequest("POST", site+"/auth/device", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Origin", site)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&#43;", "+", "&amp;", "&", "&#34;", `"`, "&#39;", "'", "&lt;", "<", "&gt;", ">").Replace(s)
}

func TestDeviceFlow(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")

	d := startDevice(t, site.URL)
	if !regexp.MustCompile(`^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$`).MatchString(d.UserCode) ||
		d.VerificationURI != site.URL+"/auth/device" || d.VerificationURIComplete != d.VerificationURI+"?user_code="+d.UserCode ||
		d.ExpiresIn != 600 || d.Interval != 5 || len(d.DeviceCode) < 40 {
		t.Fatalf("device authorization response %+v", d)
	}
	// Pending, then slow_down when polling faster than the interval.
	if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 400 || m["error"] != "authorization_pending" {
		t.Fatalf("first poll: %d %v", s, m)
	}
	if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 400 || m["error"] != "slow_down" {
		t.Fatalf("fast poll: %d %v", s, m)
	}
	// A cross-site approval is refused.
	form := url.Values{"user_code": {d.UserCode}, "action": {"approve"}, "csrf": {"forged"}}
	req, _ := http.NewRequest("POST", site.URL+"/auth/device", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, _ := c.Do(req)
	if resp.StatusCode != http.StatusForbidden {
		t.Fatalf("forged approval: %d", resp.StatusCode)
	}
	resp.Body.Close()

	if resp := decide(t, c, site.URL, d.UserCode, "approve"); resp.StatusCode != 200 || !strings.Contains(body(t, resp), "Approved") {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
	time.Sleep(5 * time.Second) // honour the (slowed-down) interval
	s, m := pollDevice(t, site.URL, d.DeviceCode)
	if s != 200 || m["token_type"] != "Bearer" || m["access_token"] == nil {
		t.Fatalf("token after approval: %d %v", s, m)
	}
	azat := m["access_token"].(string)
	if resp := get(t, browser(), site.URL+"/files/x", "Authorization", "Bearer "+azat); resp.StatusCode != 200 {
		t.Fatalf("AZAT from the device flow: %d", resp.StatusCode)
	}
	// Single use.
	if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 400 || m["error"] != "invalid_grant" {
		t.Fatalf("reused device code: %d %v", s, m)
	}

	t.Run("deny", func(t *testing.T) {
		d := startDevice(t, site.URL)
		decide(t, c, site.URL, d.UserCode, "deny")
		if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 400 || m["error"] != "access_denied" {
			t.Fatalf("after denial: %d %v", s, m)
		}
	})
	t.Run("expired", func(t *testing.T) {
		d := startDevice(t, site.URL)
		h := sha256.Sum256([]byte(d.DeviceCode))
		f := nsFile(t, site.Storage, "device/code/"+hex.EncodeToString(h[:]))
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var rec map[string]any
		_ = json.Unmarshal(b, &rec)
		rec["exp"] = time.Now().Add(-time.Second).Unix()
		b, _ = json.Marshal(rec)
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 400 || m["error"] != "expired_token" {
			t.Fatalf("expired: %d %v", s, m)
		}
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Fatalf("expired device record still stored after the poll: %v", err)
		}
	})
	t.Run("wrong user code and brute force bound", func(t *testing.T) {
		b2 := browser()
		login(t, b2, op, site.URL, "/")
		resp := get(t, b2, site.URL+"/auth/device?user_code=BCDF-GHJK", navigate...)
		if resp.StatusCode != 400 || !strings.Contains(body(t, resp), "Unknown or expired code") {
			t.Fatalf("wrong code: %d", resp.StatusCode)
		}
		var last int
		for range 12 {
			last, _ = lookupCode(t, b2, site.URL, "ZZZZ-ZZZZ")
		}
		if last != http.StatusTooManyRequests {
			t.Fatalf("after 13 wrong codes: %d, want 429", last)
		}
	})
	t.Run("not logged in", func(t *testing.T) {
		resp := get(t, browser(), site.URL+"/auth/device?user_code="+d.UserCode, navigate...)
		if resp.StatusCode != http.StatusFound || !strings.HasPrefix(resp.Header.Get("Location"), "/auth/login?back=%2Fauth%2Fdevice") {
			t.Fatalf("anonymous device page: %d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
}
