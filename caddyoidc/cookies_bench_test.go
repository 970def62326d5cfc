package caddyoidc

import (
	"net/http"
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
