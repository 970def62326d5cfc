package caddyoidc_test

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// chromiumPath finds Debian's chromium. Under CI (or with
// CADDY_OIDC_REQUIRE_BROWSER=1) a missing browser fails the test.
func chromiumPath(t *testing.T) string {
	for _, p := range []string{os.Getenv("CHROMIUM"), "/usr/bin/chromium", "/usr/bin/chromium-browser"} {
		if p == "" {
			continue
		}
		if _, err := exec.LookPath(p); err == nil {
			return p
		}
	}
	if requireBrowser() {
		t.Fatal("chromium is required (apt-get install -y chromium) but was not found")
	}
	t.Skip("chromium not installed; set CADDY_OIDC_REQUIRE_BROWSER=1 to make this a failure")
	return ""
}

// headless starts Debian's chromium with the flags this sandbox needs.
func headless(t *testing.T) context.Context {
	dir, err := os.MkdirTemp("", "caddy-oidc-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromiumPath(t)),
		chromedp.Flag("headless", true),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(dir),
	)
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	ctx, cancelT := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(func() {
		cancelT()
		cancelC()
		cancelA()
		_ = os.RemoveAll(dir) // chromium may still be writing: best effort
	})
	return ctx
}

// TestBrowserLogin logs in through the OP's login form in headless Chromium,
// reads the upstream page, then logs out with the logout page's button.
func TestBrowserLogin(t *testing.T) {
	ctx := headless(t)
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")

	var text, loc string
	browserLogin(t, ctx, site.URL+"/app/report?id=7")
	// The browser goes through the provider, the callback and the redirect
	// back: wait until it lands (queries during a navigation may fail).
	waitLocation(t, ctx, site.URL+"/app/report")
	if err := chromedp.Run(ctx, chromedp.WaitVisible(`body`, chromedp.ByQuery),
		chromedp.Text(`body`, &text, chromedp.ByQuery), chromedp.Location(&loc)); err != nil {
		t.Fatalf("reading the page: %v", err)
	}
	if !strings.Contains(text, `"user":"id1"`) || !strings.Contains(text, `/app/report?id=7`) {
		t.Fatalf("upstream page after login at %s: %q", loc, text)
	}
	if up.header().Get("X-Auth-Request-Email") != "test-user@zitadel.ch" {
		t.Fatalf("upstream email %q", up.header().Get("X-Auth-Request-Email"))
	}

	// The session cookie is HttpOnly: page scripts cannot read it.
	var cookies string
	if err := chromedp.Run(ctx, chromedp.Evaluate(`document.cookie`, &cookies)); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cookies, "caddy_oidc") {
		t.Fatalf("session cookie readable by JavaScript: %q", cookies)
	}

	// Logout: the GET page has a button; the POST ends the session at the
	// provider, which sends the browser back; the next visit asks for login.
	err := chromedp.Run(ctx,
		chromedp.Navigate(site.URL+"/auth/logout"),
		chromedp.WaitVisible(`button[type=submit]`, chromedp.ByQuery),
		chromedp.Click(`button[type=submit]`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("browser logout: %v", err)
	}
	// logout -> provider end_session -> site / -> login -> provider form
	waitLocation(t, ctx, op.Issuer+"/login")
	err = chromedp.Run(ctx,
		chromedp.Navigate(site.URL+"/app"),
		chromedp.WaitVisible(`#password`, chromedp.ByID),
		chromedp.Location(&loc),
	)
	if err != nil {
		t.Fatalf("browser logout: %v", err)
	}
	if !strings.HasPrefix(loc, op.Issuer) {
		t.Fatalf("after logout /app went to %s, want the provider's login", loc)
	}
}

// browserLogin opens url in the browser, which the site sends to the
// provider's login form, and logs in there as the test user.
func browserLogin(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	if err := chromedp.Run(ctx, chromedp.Navigate(url)); err != nil {
		t.Fatalf("browser: %v", err)
	}
	fillLogin(t, ctx)
}

// fillLogin logs in as the test user at the provider's login form the
// browser shows.
func fillLogin(t *testing.T, ctx context.Context) {
	t.Helper()
	err := chromedp.Run(ctx,
		chromedp.WaitVisible(`#password`, chromedp.ByID),
		chromedp.SetValue(`#username`, testop.Username, chromedp.ByID),
		chromedp.SetValue(`#password`, testop.Password, chromedp.ByID),
		chromedp.Click(`button[type=submit]`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("browser login: %v", err)
	}
}

// waitLocation polls the page's URL until it starts with prefix.
func waitLocation(t *testing.T, ctx context.Context, prefix string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	var loc string
	for time.Now().Before(deadline) {
		if err := chromedp.Run(ctx, chromedp.Location(&loc)); err == nil && strings.HasPrefix(loc, prefix) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("browser at %q, want %s...", loc, prefix)
}

// TestBrowserDeviceApproval: a CLI's device code approved in headless
// Chromium (login through the provider's form on the way).
func TestBrowserDeviceApproval(t *testing.T) {
	ctx := headless(t)
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "azat"), up, "")
	d := startDevice(t, site.URL)

	var shown, msg string
	err := chromedp.Run(ctx,
		chromedp.Navigate(d.VerificationURIComplete),
		chromedp.WaitVisible(`#password`, chromedp.ByID),
		chromedp.SetValue(`#password`, testop.Password, chromedp.ByID),
		chromedp.Click(`button[type=submit]`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatal(err)
	}
	waitLocation(t, ctx, site.URL+"/auth/device")
	// The link named the code, but one click on Approve approves nothing:
	// the user must type what the device shows.
	var refused string
	err = chromedp.Run(ctx,
		chromedp.WaitVisible(`#approve`, chromedp.ByID),
		chromedp.Click(`#approve`, chromedp.ByID),
		chromedp.WaitVisible(`#message`, chromedp.ByID),
		chromedp.Text(`#message`, &refused, chromedp.ByID),
	)
	if err != nil || !strings.Contains(refused, "not this request's code") {
		t.Fatalf("approve without typing the code: %v, message %q", err, refused)
	}
	err = chromedp.Run(ctx,
		chromedp.WaitVisible(`#approve`, chromedp.ByID),
		chromedp.Text(`#code`, &shown, chromedp.ByID),
		chromedp.SendKeys(`#confirm_code`, d.UserCode, chromedp.ByID),
		chromedp.Click(`#approve`, chromedp.ByID),
		chromedp.WaitNotPresent(`#confirm_code`, chromedp.ByID), // the result page
		chromedp.WaitVisible(`#message`, chromedp.ByID),
		chromedp.Text(`#message`, &msg, chromedp.ByID),
	)
	if err != nil {
		t.Fatalf("approving in the browser: %v", err)
	}
	if shown != d.UserCode || !strings.Contains(msg, "Approved") {
		t.Fatalf("page showed code %q, message %q", shown, msg)
	}
	s, m := pollDevice(t, site.URL, d.DeviceCode)
	if s != 200 || m["access_token"] == nil {
		t.Fatalf("token after browser approval: %d %v", s, m)
	}
	if resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+m["access_token"].(string)); resp.StatusCode != 200 {
		t.Fatalf("AZAT: %d", resp.StatusCode)
	}
}

// TestBrowserLogoutWithoutEndSession: with a provider that has no
// end_session_endpoint (dex), the logout button ends on the local "you are
// logged out" page (the logout page's CSP allows that redirect), and the
// next visit asks for a login again.
func TestBrowserLogoutWithoutEndSession(t *testing.T) {
	ctx := headless(t)
	op := startOP(t, testop.Options{NoEndSession: true})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op), up, "")

	browserLogin(t, ctx, site.URL+"/app")
	waitLocation(t, ctx, site.URL+"/app")
	err := chromedp.Run(ctx,
		chromedp.Navigate(site.URL+"/auth/logout"),
		chromedp.WaitVisible(`button[type=submit]`, chromedp.ByQuery),
		chromedp.Click(`button[type=submit]`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("browser logout: %v", err)
	}
	waitLocation(t, ctx, site.URL+"/auth/logged-out")
	var text string
	if err := chromedp.Run(ctx, chromedp.WaitVisible(`h1`, chromedp.ByQuery), chromedp.Text(`body`, &text, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, "You are logged out") || !strings.Contains(text, "Log in again") {
		t.Fatalf("logged-out page: %q", text)
	}
	var loc string
	if err := chromedp.Run(ctx, chromedp.Navigate(site.URL+"/app"), chromedp.WaitVisible(`#password`, chromedp.ByID),
		chromedp.Location(&loc)); err != nil {
		t.Fatalf("after logout: %v", err)
	}
	if !strings.HasPrefix(loc, op.Issuer) {
		t.Fatalf("after logout /app went to %s, want the provider's login", loc)
	}
}

// TestBrowserProviderChooser: at a site with two providers, an
// unauthenticated visit shows the chooser page; the user picks the second
// provider with the keyboard alone (Tab, Tab, Enter), logs in there, and
// lands where they were going, as that provider's user.
func TestBrowserProviderChooser(t *testing.T) {
	ctx := headless(t)
	e := startTwoProviders(t, testop.Options{})
	var title, nav string
	err := chromedp.Run(ctx,
		chromedp.Navigate(e.site.URL+"/app/report?id=7"),
		chromedp.WaitVisible(`nav a`, chromedp.ByQuery),
		chromedp.Title(&title),
		chromedp.Evaluate(`document.querySelector('nav').getAttribute('aria-labelledby') + ':' +
			Array.from(document.querySelectorAll('nav a')).map(a => a.textContent).join('|')`, &nav),
	)
	if err != nil {
		t.Fatalf("chooser: %v", err)
	}
	if title != "Log in" || nav != "choose:Log in with corp|Log in with Partner SSO" {
		t.Fatalf("chooser page: title %q, nav %q", title, nav)
	}
	err = chromedp.Run(ctx,
		chromedp.KeyEvent("\t"), chromedp.KeyEvent("\t"), chromedp.KeyEvent("\r"),
	)
	if err != nil {
		t.Fatalf("keyboard: %v", err)
	}
	waitLocation(t, ctx, e.partner.Issuer)
	fillLogin(t, ctx)
	waitLocation(t, ctx, e.site.URL+"/app/report")
	var text string
	if err := chromedp.Run(ctx, chromedp.Text(`body`, &text, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, `/app/report?id=7`) || e.up.header().Get("X-Auth-Request-Provider") != "partner" {
		t.Fatalf("after login: %q, provider %q", text, e.up.header().Get("X-Auth-Request-Provider"))
	}
}
