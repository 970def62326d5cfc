package caddyoidc

import (
	"net/http"
	"strings"
	"testing"
)

// browserHeaders are the headers a browser sends with a navigation besides
// the session cookie, plus an application cookie: what removeIdentityHeaders
// and stripCookies scan on every request.
var browserHeaders = [][2]string{
	{"Accept", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"},
	{"Accept-Encoding", "gzip, deflate, br, zstd"},
	{"Accept-Language", "en-US,en;q=0.9"},
	{"Cache-Control", "max-age=0"},
	{"Priority", "u=0, i"},
	{"Sec-Ch-Ua", `"Chromium";v="131", "Not_A Brand";v="24"`},
	{"Sec-Ch-Ua-Mobile", "?0"},
	{"Sec-Ch-Ua-Platform", `"Linux"`},
	{"Sec-Fetch-Dest", "document"},
	{"Sec-Fetch-Mode", "navigate"},
	{"Sec-Fetch-Site", "same-origin"},
	{"Sec-Fetch-User", "?1"},
	{"Upgrade-Insecure-Requests", "1"},
	{"User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"},
}

// BenchmarkServeHTTPCookieBrowser is BenchmarkServeHTTPCookie with a
// browser's headers and an application cookie next to the session.
func BenchmarkServeHTTPCookieBrowser(b *testing.B) {
	e := benchSetup(b)
	cookie := "theme=dark; " + chunkName(e.o.CookieName, 0) + "=" + e.cookie + "; app_prefs=compact"
	benchServe(b, func(r *http.Request) {
		for _, h := range browserHeaders {
			r.Header[h[0]] = []string{h[1]}
		}
		r.Header.Set("Cookie", cookie)
	})
}

// browserRequest is a request with browserHeaders (and no cookie).
func browserRequest() *http.Request {
	r := benchRequest()
	for _, h := range browserHeaders {
		r.Header[h[0]] = []string{h[1]}
	}
	return r
}

// BenchmarkRemoveIdentityHeaders: the per-request scan for forged identity
// headers on a browser request with nothing to remove.
func BenchmarkRemoveIdentityHeaders(b *testing.B) {
	o := &OIDC{Provider: Provider{ClaimHeaders: map[string]string{"X-User-Name": "name"}}, rt: &runtime{}}
	o.rt.identityHeaders = newHeaderSet(o.ClaimHeaders)
	r := browserRequest()
	b.ReportAllocs()
	for b.Loop() {
		o.removeIdentityHeaders(r)
	}
}

// BenchmarkStripCookies: the session chunk removed between two application
// cookies.
func BenchmarkStripCookies(b *testing.B) {
	r := browserRequest()
	line := []string{"theme=dark; caddy_oidc_0=" + strings.Repeat("x", 3500) + "; app_prefs=compact"}
	opts := cookieOpts{base: "caddy_oidc"}
	b.ReportAllocs()
	for b.Loop() {
		r.Header["Cookie"] = line
		stripCookies(r, opts)
	}
}
