package caddyoidc_test

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// TestBrowserHostPrefixCookies: a real browser accepts the __Host- flow,
// session and token cookies (Secure on the loopback origin, which Chromium
// treats as secure), so the login works; a page script cannot shadow them
// (Chromium refuses a __Host- cookie with another Path), and a bare
// caddy_oidc_0 it sets instead is ignored.
func TestBrowserHostPrefixCookies(t *testing.T) {
	ctx := headless(t)
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "cookie_secure on", "expose_tokens"), up, "")

	browserLogin(t, ctx, site.URL+"/app/page")
	waitLocation(t, ctx, site.URL+"/app/page")
	var text, cookies string
	if err := chromedp.Run(ctx, chromedp.WaitVisible(`body`, chromedp.ByQuery),
		chromedp.Text(`body`, &text, chromedp.ByQuery), chromedp.Evaluate(`document.cookie`, &cookies)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, `"user":"id1"`) {
		t.Fatalf("after login: %q", text)
	}
	if !strings.Contains(cookies, "__Host-caddy_oidc_access_token=") || strings.Contains(cookies, "__Host-caddy_oidc_0") {
		t.Fatalf("document.cookie = %q, want the exposed __Host- token cookie and no session chunk", cookies)
	}

	// A script (or a sibling subdomain's page) tries to shadow the session.
	if err := chromedp.Run(ctx, chromedp.Evaluate(`document.cookie = "__Host-caddy_oidc_0=evil; Path=/app; Secure";
		document.cookie = "caddy_oidc_0=evil; Path=/app"; document.cookie`, &cookies)); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(cookies, "__Host-caddy_oidc_0=evil") {
		t.Fatalf("the browser took a __Host- cookie with Path=/app: %q", cookies)
	}
	if !strings.Contains(cookies, "caddy_oidc_0=evil") {
		t.Fatalf("the bare cookie was not set (the test would prove nothing): %q", cookies)
	}
	if err := chromedp.Run(ctx, chromedp.Navigate(site.URL+"/app/other"), chromedp.WaitVisible(`body`, chromedp.ByQuery),
		chromedp.Text(`body`, &text, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(text, `"user":"id1"`) || strings.Contains(up.header().Get("Cookie"), "caddy_oidc_0") {
		t.Fatalf("with a tossed bare cookie: %q, upstream Cookie %q", text, up.header().Get("Cookie"))
	}
}
