package caddyoidc_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// fromIP is an HTTP client whose connections come from the loopback
// address ip (any 127.0.0.0/8 address works on Linux): another "client IP"
// for the handler's limits.
func fromIP(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	return &http.Client{
		Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// requestCode posts a device authorization request with c.
func requestCode(t *testing.T, c *http.Client, site string, form url.Values, ua string) (*http.Response, deviceStart, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", site+"/auth/device/code", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if ua != "" {
		req.Header.Set("User-Agent", ua)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw json.RawMessage
	_ = json.NewDecoder(resp.Body).Decode(&raw)
	var d deviceStart
	var m map[string]any
	_ = json.Unmarshal(raw, &d)
	_ = json.Unmarshal(raw, &m)
	return resp, d, m
}

// storedFiles counts the files in a storage directory (lock files aside).
func storedFiles(t *testing.T, dir string) int {
	t.Helper()
	n := 0
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() && d.Name() == "locks" {
			return filepath.SkipDir
		}
		if err == nil && !d.IsDir() {
			n++
		}
		return nil
	})
	return n
}

// postDevice posts form to /auth/device as a same-origin page would.
func postDevice(t *testing.T, c *http.Client, site string, form url.Values) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("POST", site+"/auth/device", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	req.Header.Set("Origin", site)
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return resp.StatusCode, body(t, resp)
}

// lookupCode types code into the lookup form of the logged-in browser c
// (GET the form for its CSRF token, POST action=lookup, same origin): the
// path that spends the user's wrong-code budget.
func lookupCode(t *testing.T, c *http.Client, site, code string) (int, string) {
	t.Helper()
	page := body(t, get(t, c, site+"/auth/device", navigate...))
	m := csrfRe.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no csrf token on the lookup form: %s", page)
	}
	return postDevice(t, c, site, url.Values{"user_code": {code}, "csrf": {htmlUnescape(m[1])}, "action": {"lookup"}})
}

// recordStatus is the stored status of a device code.
func recordStatus(t *testing.T, storage, deviceCode string) string {
	t.Helper()
	b, err := os.ReadFile(deviceFile(t, storage, deviceCode))
	if err != nil {
		t.Fatal(err)
	}
	var rec struct{ Status string }
	_ = json.Unmarshal(b, &rec)
	return rec.Status
}

var timeRe = regexp.MustCompile(`<td id="time">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC \(\d+s ago\)</td>`)

// TestDevicePhishingPage: a phisher starts a device login from their own
// machine and sends the victim verification_uri_complete. The page tells
// the victim where the request came from (IP, time, User-Agent, escaped and
// bounded), labels the client name as self-declared, and a click on
// Approve without typing the code the victim's own device shows (they have
// none) approves nothing; a typed code that differs is a wrong code.
func TestDevicePhishingPage(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	victim := browser()
	login(t, victim, op, site.URL, "/")

	ua := "<script>alert(1)</script>" + strings.Repeat("A", 400)
	resp, d, _ := requestCode(t, fromIP("127.0.0.3"), site.URL, url.Values{"client_id": {`Your <b>IT</b> department`}}, ua)
	if resp.StatusCode != 200 {
		t.Fatalf("device code: %d", resp.StatusCode)
	}
	page := body(t, get(t, victim, d.VerificationURIComplete, navigate...))
	for _, want := range []string{
		`<td id="ip">127.0.0.3</td>`,
		`<b id="client">Your &lt;b&gt;IT&lt;/b&gt; department</b>`,
		`self-declared by the requester, not verified`,
		`&lt;script&gt;alert(1)&lt;/script&gt;`,
		`<b id="code">` + d.UserCode + `</b>`,
		`id="confirm_code" value=""`,
		`valid <span id="lifetime">24h0m0s</span>`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("approval page lacks %s", want)
		}
	}
	if !timeRe.MatchString(page) {
		t.Errorf("approval page shows no request time")
	}
	if strings.Contains(page, "<script>") || strings.Contains(page, strings.Repeat("A", 200-len("<script>alert(1)</script>")+1)) {
		t.Errorf("User-Agent shown unescaped or unbounded")
	}
	csrf := htmlUnescape(csrfRe.FindStringSubmatch(page)[1])

	// One click (nothing typed), a typed code that differs, a cross-site
	// post: nothing approved, the request still pending.
	for _, tt := range []struct {
		name, typed string
		crossSite   bool
		status      int
	}{
		{"click without typing", "", false, 400},
		{"another code typed", "ZZZZ-ZZZZ", false, 400},
		{"garbage typed", "<x>", false, 400},
		{"cross-site with the right code", d.UserCode, true, 403},
	} {
		form := url.Values{"user_code": {d.UserCode}, "csrf": {csrf}, "action": {"approve"}, "confirm_code": {tt.typed}}
		var status int
		if tt.crossSite {
			req, _ := http.NewRequest("POST", site.URL+"/auth/device", strings.NewReader(form.Encode()))
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			req.Header.Set("Sec-Fetch-Site", "cross-site")
			r, err := victim.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			r.Body.Close()
			status = r.StatusCode
		} else {
			var page string
			status, page = postDevice(t, victim, site.URL, form)
			if !strings.Contains(page, "not this request&#39;s code") {
				t.Errorf("%s: page does not say the code differs", tt.name)
			}
		}
		if status != tt.status || recordStatus(t, site.Storage, d.DeviceCode) != "pending" {
			t.Fatalf("%s: %d, record %s; want %d and pending", tt.name, status, recordStatus(t, site.Storage, d.DeviceCode), tt.status)
		}
	}
	// Deny needs no typing.
	if s, page := postDevice(t, victim, site.URL, url.Values{"user_code": {d.UserCode}, "csrf": {csrf}, "action": {"deny"}}); s != 200 || !strings.Contains(page, "Denied") {
		t.Fatalf("deny: %d", s)
	}
	if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 400 || m["error"] != "access_denied" {
		t.Fatalf("after deny: %d %v", s, m)
	}

	t.Run("legitimate: link, then the typed code", func(t *testing.T) {
		d := startDevice(t, site.URL)
		// Typed in lower case without the dash: still the code.
		typed := strings.ToLower(strings.ReplaceAll(d.UserCode, "-", ""))
		if resp := decideTyped(t, victim, site.URL, d.UserCode, typed, "approve"); resp.StatusCode != 200 || !strings.Contains(body(t, resp), "Approved") {
			t.Fatalf("approve with the typed code: %d", resp.StatusCode)
		}
		if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 200 || m["access_token"] == nil {
			t.Fatalf("token: %d %v", s, m)
		}
	})
	t.Run("legitimate: code typed on the lookup form", func(t *testing.T) {
		d := startDevice(t, site.URL)
		page := body(t, get(t, victim, d.VerificationURI, navigate...))
		m := csrfRe.FindStringSubmatch(page)
		if m == nil || !strings.Contains(page, `value="lookup"`) {
			t.Fatalf("lookup form: %s", page)
		}
		s, page := postDevice(t, victim, site.URL, url.Values{"user_code": {d.UserCode}, "csrf": {htmlUnescape(m[1])}, "action": {"lookup"}})
		if s != 200 || !strings.Contains(page, `id="confirm_code" value="`+d.UserCode+`"`) || !strings.Contains(page, `<td id="ip">127.0.0.1</td>`) {
			t.Fatalf("after lookup: %d %s", s, page)
		}
		m = csrfRe.FindStringSubmatch(page)
		if s, _ := postDevice(t, victim, site.URL, url.Values{"user_code": {d.UserCode}, "csrf": {htmlUnescape(m[1])},
			"action": {"approve"}, "confirm_code": {d.UserCode}}); s != 200 {
			t.Fatalf("approve after lookup: %d", s)
		}
		if recordStatus(t, site.Storage, d.DeviceCode) != "approved" {
			t.Fatal("not approved")
		}
		// A lookup posted cross-site (no token of this session) is refused.
		req, _ := http.NewRequest("POST", site.URL+"/auth/device", strings.NewReader("action=lookup&user_code="+d.UserCode))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if r, _ := victim.Do(req); r.StatusCode != http.StatusForbidden {
			t.Fatalf("cross-site lookup: %d", r.StatusCode)
		}
	})
}

// TestDeviceClientAllowList: with device_clients, a requester naming
// another client (to pass as something trusted) is refused at the start and
// nothing is stored; an allowed name works and is still labelled as
// declared by the requester.
func TestDeviceClientAllowList(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat {\n\t\t\tdevice_clients \"caddy oidc-login\" backup-job\n\t\t}"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	before := storedFiles(t, site.Storage)
	for _, name := range []string{"Your IT department", "", "backup-job\n", "caddy oidc-login "} {
		resp, _, m := requestCode(t, http.DefaultClient, site.URL, url.Values{"client_id": {name}}, "")
		if resp.StatusCode != 400 || m["error"] != "invalid_client" {
			t.Errorf("client %q: %d %v, want 400 invalid_client", name, resp.StatusCode, m)
		}
	}
	if n := storedFiles(t, site.Storage); n != before {
		t.Fatalf("refused requests stored %d files", n-before)
	}
	resp, d, _ := requestCode(t, http.DefaultClient, site.URL, url.Values{"client_id": {"caddy oidc-login"}}, "")
	if resp.StatusCode != 200 {
		t.Fatalf("allowed client: %d", resp.StatusCode)
	}
	page := body(t, get(t, c, d.VerificationURIComplete, navigate...))
	if !strings.Contains(page, `<b id="client">caddy oidc-login</b>`) || !strings.Contains(page, "one of the names this site allows, not verified") {
		t.Fatalf("page: %s", page)
	}
}

// jwtClaims decodes a JWT's payload (no verification: the site verified it).
func jwtClaims(t *testing.T, tok string) map[string]any {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %.20q", tok)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	return m
}

// TestDeviceLifetime: a token the user approved for a device they cannot
// see lives device_lifetime (default 24h), not lifetime (168h), while a
// token minted from the browser session keeps lifetime; device_lifetime
// longer than lifetime is a configuration error.
func TestDeviceLifetime(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	for _, tt := range []struct {
		block string
		want  time.Duration
	}{
		{"azat", 24 * time.Hour},
		{"azat {\n\t\t\tdevice_lifetime 2h\n\t\t}", 2 * time.Hour},
		{"azat {\n\t\t\tlifetime 1h\n\t\t}", time.Hour},
	} {
		site := startCaddy(t, oidcBlock(op, tt.block), up, "")
		c := browser()
		login(t, c, op, site.URL, "/")
		d := startDevice(t, site.URL)
		if resp := decide(t, c, site.URL, d.UserCode, "approve"); resp.StatusCode != 200 {
			t.Fatalf("%s: approve: %d", tt.block, resp.StatusCode)
		}
		s, m := pollDevice(t, site.URL, d.DeviceCode)
		if s != 200 {
			t.Fatalf("%s: token: %d %v", tt.block, s, m)
		}
		cl := jwtClaims(t, m["access_token"].(string))
		exp, iat := cl["exp"].(float64), cl["iat"].(float64)
		if got := time.Duration(exp-iat) * time.Second; got != tt.want || m["expires_in"].(float64) != tt.want.Seconds() {
			t.Errorf("%s: device AZAT lives %s (expires_in %v), want %s", tt.block, got, m["expires_in"], tt.want)
		}
		if tt.block == "azat" {
			resp := get(t, c, site.URL+"/auth/token")
			var tok struct {
				ExpiresIn int64 `json:"expires_in"`
			}
			_ = json.NewDecoder(resp.Body).Decode(&tok)
			if tok.ExpiresIn != int64((168 * time.Hour).Seconds()) {
				t.Errorf("browser-minted AZAT: expires_in %d, want 168h", tok.ExpiresIn)
			}
		}
	}
	cf := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system %s\n}\nhttp://127.0.0.1:%d {\n\t%s\n\trespond ok\n}\n",
		t.TempDir(), freePort(t), oidcBlock(op, "azat {\n\t\t\tlifetime 12h\n\t\t\tdevice_lifetime 24h\n\t\t}"))
	cfg, _, err := caddyconfigAdapt(cf)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err == nil || !strings.Contains(err.Error(), "device_lifetime") {
		t.Fatalf("device_lifetime over lifetime loaded: %v", err)
	}
}

// TestDeviceCodeFlood: an unauthenticated flood of POST /auth/device/code
// from one IP gets 429 slow_down with Retry-After after the per-IP burst,
// and a flood from many IPs hits the global limit (429
// temporarily_unavailable); refused requests store nothing, and another IP
// still gets codes while one is limited.
func TestDeviceCodeFlood(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	before := storedFiles(t, site.Storage)
	ok := 0
	refusal := func(resp *http.Response, m map[string]any, want string) {
		t.Helper()
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if m["error"] != want || err != nil || ra < 1 || ra > 60 {
			t.Fatalf("429: error %v, Retry-After %q; want %s and 1..60 s", m["error"], resp.Header.Get("Retry-After"), want)
		}
	}
	attacker := fromIP("127.0.0.1")
	limited := false
	for i := range 20 {
		resp, _, m := requestCode(t, attacker, site.URL, url.Values{"client_id": {"flood"}}, "")
		switch {
		case resp.StatusCode == 200:
			ok++
		case resp.StatusCode == 429 && i >= 10:
			refusal(resp, m, "slow_down")
			limited = true
		default:
			t.Fatalf("request %d: %d %v", i, resp.StatusCode, m)
		}
	}
	if !limited {
		t.Fatal("20 requests from one IP: none refused")
	}
	if n := storedFiles(t, site.Storage) - before; n != 2*ok {
		t.Fatalf("%d codes issued but %d files stored", ok, n)
	}
	if resp, _, _ := requestCode(t, fromIP("127.0.0.2"), site.URL, url.Values{"client_id": {"other"}}, ""); resp.StatusCode != 200 {
		t.Fatalf("another IP while one is limited: %d", resp.StatusCode)
	}
	ok++

	// Many IPs: the global limit.
	global := false
	for i := 1; i <= 40 && !global; i++ {
		c := fromIP(fmt.Sprintf("127.0.1.%d", i))
		for range 10 {
			resp, _, m := requestCode(t, c, site.URL, url.Values{"client_id": {"flood"}}, "")
			if resp.StatusCode == 200 {
				ok++
				continue
			}
			if resp.StatusCode != 429 {
				t.Fatalf("%d %v", resp.StatusCode, m)
			}
			refusal(resp, m, "temporarily_unavailable")
			global = true
			break
		}
	}
	if !global {
		t.Fatal("400 requests from 40 IPs: the global limit never answered")
	}
	if n := storedFiles(t, site.Storage) - before; n != 2*ok {
		t.Fatalf("%d codes issued but %d files stored", ok, n)
	}
}

// TestDeviceCodeCap: with maxPendingDeviceCodes (1000) records in storage,
// a new request gets 429 temporarily_unavailable with Retry-After and
// stores nothing, whichever IP asks; once records expire, a bounded sweep
// (200 records) deletes them and codes are issued again.
func TestDeviceCodeCap(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	d := startDevice(t, site.URL)
	dir := filepath.Dir(deviceFile(t, site.Storage, d.DeviceCode))
	fill := func(exp int64) {
		for i := range 999 {
			rec := fmt.Sprintf(`{"user_code":"","client":"x","exp":%d,"interval":5,"status":"pending"}`, exp)
			if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%064x", i)), []byte(rec), 0o600); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill(time.Now().Add(time.Hour).Unix())
	before := storedFiles(t, site.Storage)
	resp, _, m := requestCode(t, fromIP("127.0.0.9"), site.URL, url.Values{"client_id": {"x"}}, "")
	if resp.StatusCode != 429 || m["error"] != "temporarily_unavailable" || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("at the cap: %d %v Retry-After %q", resp.StatusCode, m, resp.Header.Get("Retry-After"))
	}
	if n := storedFiles(t, site.Storage); n != before {
		t.Fatalf("refused request stored %d files", n-before)
	}
	fill(time.Now().Add(-time.Second).Unix())
	resp, _, _ = requestCode(t, fromIP("127.0.0.9"), site.URL, url.Values{"client_id": {"x"}}, "")
	if resp.StatusCode != 200 {
		t.Fatalf("after expiry: %d", resp.StatusCode)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1000-200+1 {
		t.Fatalf("%d records after the sweep, want 801 (200 swept, 1 new)", len(entries))
	}
	// The live code survived the sweep.
	if s, m := pollDevice(t, site.URL, d.DeviceCode); s != 400 || m["error"] != "authorization_pending" {
		t.Fatalf("live code after the sweep: %d %v", s, m)
	}
}

// TestDeviceWrongCodeLimitPerUser: approvals are not tries (10 in a row
// work); a user guessing codes gets 429 with Retry-After after 10 wrong
// ones, also from a second browser session and on a restarted instance
// sharing the storage (the counter is per user, in storage).
func TestDeviceWrongCodeLimitPerUser(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	block := oidcBlock(op, "azat")
	site := startCaddy(t, block, up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	for i := range 10 {
		resp, d, _ := requestCode(t, fromIP(fmt.Sprintf("127.0.2.%d", i+1)), site.URL, url.Values{"client_id": {"test-cli"}}, "")
		if resp.StatusCode != 200 {
			t.Fatalf("code %d: %d", i, resp.StatusCode)
		}
		if resp := decide(t, c, site.URL, d.UserCode, "approve"); resp.StatusCode != 200 {
			t.Fatalf("legitimate approval %d: %d", i+1, resp.StatusCode)
		}
	}
	for i := range 10 {
		if s, _ := lookupCode(t, c, site.URL, "ZZZZ-ZZZZ"); s != 400 {
			t.Fatalf("wrong code %d: %d", i+1, s)
		}
	}
	d := startDevice(t, site.URL)
	limited := func(c *http.Client, site string) {
		t.Helper()
		resp := get(t, c, site+"/auth/device?user_code="+d.UserCode, navigate...)
		ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
		if resp.StatusCode != 429 || err != nil || ra < 1 || ra > 600 || !strings.Contains(body(t, resp), "Too many wrong codes") {
			t.Fatalf("after 10 wrong codes: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
		}
	}
	limited(c, site.URL)
	second := browser()
	login(t, second, op, site.URL, "/")
	limited(second, site.URL)
	// The approval is refused too (even with the right typed code).
	if resp := get(t, second, site.URL+"/auth/device", navigate...); resp.StatusCode != 200 {
		t.Fatalf("blank page: %d", resp.StatusCode)
	}
	// Another instance of the site on the same storage: this one restarted
	// (a new handler, nothing in memory), same address.
	restartCaddy(t, site, block, up)
	third := browser()
	login(t, third, op, site.URL, "/")
	limited(third, site.URL)
}

// restartCaddy loads a new configuration for the running site (same
// address and storage): a new handler, as another instance would have.
func restartCaddy(t *testing.T, site *caddyInstance, oidcBlock string, up *upstream) {
	t.Helper()
	cf := fmt.Sprintf("{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system %s\n}\n%s {\n\t%s\n\treverse_proxy %s\n}\n",
		site.Storage, site.URL, oidcBlock, strings.TrimPrefix(up.URL, "http://"))
	cfg, _, err := caddyconfigAdapt(cf)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
}

// TestDevicePageBodyLimit: POST /auth/device reads at most 4 KiB; beyond,
// 413 whether or not the sender is logged in, and the page still works.
func TestDevicePageBodyLimit(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	big := url.Values{"action": {"lookup"}, "pad": {strings.Repeat("x", 5000)}}
	for _, cl := range []*http.Client{c, browser()} {
		if s, _ := postDevice(t, cl, site.URL, big); s != http.StatusRequestEntityTooLarge {
			t.Fatalf("5 KB form: %d, want 413", s)
		}
	}
	resp, _, m := requestCode(t, http.DefaultClient, site.URL, big, "")
	if resp.StatusCode != 400 || m["error"] != "invalid_request" {
		t.Fatalf("5 KB device/code form: %d %v", resp.StatusCode, m)
	}
	d := startDevice(t, site.URL)
	if resp := decide(t, c, site.URL, d.UserCode, "approve"); resp.StatusCode != 200 {
		t.Fatalf("approve: %d", resp.StatusCode)
	}
}

// TestDeviceExpiredRecordDeletedWhenTouched: an expired code looked up on
// the page is deleted (code and user-code records) and is a wrong code.
func TestDeviceExpiredRecordDeletedWhenTouched(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	d := startDevice(t, site.URL)
	f := deviceFile(t, site.Storage, d.DeviceCode)
	b, _ := os.ReadFile(f)
	var rec map[string]any
	_ = json.Unmarshal(b, &rec)
	rec["exp"] = time.Now().Add(-time.Second).Unix()
	b, _ = json.Marshal(rec)
	if err := os.WriteFile(f, b, 0o600); err != nil {
		t.Fatal(err)
	}
	before := storedFiles(t, site.Storage)
	if resp := get(t, c, d.VerificationURIComplete, navigate...); resp.StatusCode != 400 {
		t.Fatalf("expired code: %d", resp.StatusCode)
	}
	if _, err := os.Stat(f); !os.IsNotExist(err) {
		t.Fatal("expired record kept")
	}
	// Two records gone, one wrong-code counter added.
	if n := storedFiles(t, site.Storage); n != before-2+1 {
		t.Fatalf("files %d -> %d", before, n)
	}
}

// deviceFile is the storage file of a device code's record (found by its
// hash, wherever the handler's namespace puts it).
func deviceFile(t *testing.T, storage, deviceCode string) string {
	t.Helper()
	h := sha256.Sum256([]byte(deviceCode))
	name := hex.EncodeToString(h[:])
	var found string
	_ = filepath.WalkDir(storage, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && d.Name() == name && filepath.Base(filepath.Dir(p)) == "code" {
			found = p
		}
		return nil
	})
	if found == "" {
		t.Fatalf("no stored record for device code %.8s...", deviceCode)
	}
	return found
}

// TestDeviceLinkMissesBounded: links (GET ?user_code=, which any site can
// make the browser open) that miss are no unbounded oracle for pending
// codes, and another site spending their budget neither locks the user out
// nor turns a link into a click-through approval: after 10 misses a link
// shows the lookup form with the code filled in (not the request),
// Continue shows the request with an empty confirmation field, Approve
// without typing is refused, typing the device's code approves. The POST
// budget is not spent by the links: a typed wrong code is 400, not 429.
func TestDeviceLinkMissesBounded(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	d := startDevice(t, site.URL)
	for i := range 10 {
		resp := get(t, c, site.URL+"/auth/device?user_code=ZZZZ-ZZZZ", "Accept", "text/html",
			"Sec-Fetch-Mode", "navigate", "Sec-Fetch-Site", "cross-site")
		if page := body(t, resp); resp.StatusCode != 400 || !strings.Contains(page, "Unknown or expired code") {
			t.Fatalf("link miss %d: %d %s", i+1, resp.StatusCode, page)
		}
	}
	resp := get(t, c, site.URL+"/auth/device?user_code="+url.QueryEscape(d.UserCode), navigate...)
	page := body(t, resp)
	if resp.StatusCode != 200 || strings.Contains(page, "test-cli") || !strings.Contains(page, `name="from_link" value="1"`) ||
		!strings.Contains(page, `id="user_code" value="`+d.UserCode+`"`) {
		t.Fatalf("link after 10 misses: %d %s", resp.StatusCode, page)
	}
	m := csrfRe.FindStringSubmatch(page)
	s, page := postDevice(t, c, site.URL, url.Values{"user_code": {d.UserCode}, "csrf": {htmlUnescape(m[1])},
		"action": {"lookup"}, "from_link": {"1"}})
	if s != 200 || !strings.Contains(page, "test-cli") || !strings.Contains(page, `id="confirm_code" value=""`) {
		t.Fatalf("continue from a link: %d %s", s, page)
	}
	csrf := htmlUnescape(csrfRe.FindStringSubmatch(page)[1])
	if s, page := postDevice(t, c, site.URL, url.Values{"user_code": {d.UserCode}, "csrf": {csrf},
		"action": {"approve"}, "confirm_code": {""}}); s != 400 || !strings.Contains(page, "not this request&#39;s code") {
		t.Fatalf("approve without typing: %d %s", s, page)
	}
	if recordStatus(t, site.Storage, d.DeviceCode) != "pending" {
		t.Fatal("approved without the typed code")
	}
	if s, _ := postDevice(t, c, site.URL, url.Values{"user_code": {d.UserCode}, "csrf": {csrf},
		"action": {"approve"}, "confirm_code": {d.UserCode}}); s != 200 {
		t.Fatalf("approve with the typed code: %d", s)
	}
	if recordStatus(t, site.Storage, d.DeviceCode) != "approved" {
		t.Fatal("not approved")
	}
	if s, _ := lookupCode(t, c, site.URL, "ZZZZ-ZZZZ"); s != 400 {
		t.Fatalf("typed wrong code after 10 link misses: %d, want 400", s)
	}
}
