package caddyoidc_test

import (
	"strings"
	"testing"

	"github.com/chromedp/chromedp"

	"github.com/caddy-oidc/caddy-oidc/internal/testdex"
	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// TestBrowserDexChooser: in headless Chromium, the chooser of a site with
// testop ("corp") and dex offers both; the user picks dex, logs in through
// dex's own password form and lands on the page asked for, as dex's user.
func TestBrowserDexChooser(t *testing.T) {
	ctx := headless(t)
	e := startDexSite(t, testop.Options{}, testdex.Options{}, []string{"label Dex"})
	var title, nav string
	err := chromedp.Run(ctx,
		chromedp.Navigate(e.site.URL+"/app/report?id=7"),
		chromedp.WaitVisible(`nav a`, chromedp.ByQuery),
		chromedp.Title(&title),
		chromedp.Evaluate(`Array.from(document.querySelectorAll('nav a')).map(a => a.textContent).join('|')`, &nav),
	)
	if err != nil {
		t.Fatalf("chooser: %v", err)
	}
	if title != "Log in" || nav != "Log in with corp|Log in with Dex" {
		t.Fatalf("chooser page: title %q, nav %q", title, nav)
	}
	email, password := e.dex.User()
	if err := chromedp.Run(ctx, chromedp.Click(`nav a[href*="provider=dex"]`, chromedp.ByQuery)); err != nil {
		t.Fatalf("choose dex: %v", err)
	}
	waitLocation(t, ctx, e.dex.Issuer()+testdex.PathPasswordLogin)
	err = chromedp.Run(ctx,
		chromedp.WaitVisible(`input[name=login]`, chromedp.ByQuery),
		chromedp.SendKeys(`input[name=login]`, email, chromedp.ByQuery),
		chromedp.SendKeys(`input[name=password]`, password, chromedp.ByQuery),
		chromedp.Click(`button[type=submit]`, chromedp.ByQuery),
	)
	if err != nil {
		t.Fatalf("dex login form: %v", err)
	}
	waitLocation(t, ctx, e.site.URL+"/app/report")
	var text string
	if err := chromedp.Run(ctx, chromedp.Text(`body`, &text, chromedp.ByQuery)); err != nil {
		t.Fatal(err)
	}
	h := e.up.header()
	if !strings.Contains(text, `/app/report?id=7`) || h.Get("X-Auth-Request-Provider") != "dex" || h.Get("X-Auth-Request-User") != e.dex.Subject() {
		t.Fatalf("after login: %q, provider %q user %q", text, h.Get("X-Auth-Request-Provider"), h.Get("X-Auth-Request-User"))
	}
	if n := e.corp.TokenCalls("authorization_code"); n != 0 {
		t.Fatalf("corp was asked to redeem %d codes", n)
	}
}
