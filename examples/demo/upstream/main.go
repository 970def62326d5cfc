// Command upstream is the demo's application behind Caddy: a page that shows
// who the user is and which headers the proxy sent. It knows nothing about
// OpenID Connect: Caddy's oidc handler logs the user in and passes the
// identity in X-Auth-Request-* headers (and the access token as a Bearer
// Authorization header).
//
//	go run ./examples/demo/upstream [-addr 127.0.0.1:8081]
//
// GET /           the page (HTML)
// GET /api/whoami the same as JSON
//
// Credentials are never shown: of the Authorization header only the scheme,
// the token's first 10 characters and its length; Cookie is left out.
package main

import (
	"encoding/json"
	"flag"
	"html/template"
	"log"
	"net/http"
	"sort"
	"strings"
	"time"
)

// identityHeaders are the headers the oidc handler sets for the upstream.
var identityHeaders = []string{
	"X-Auth-Request-User",
	"X-Auth-Request-Email",
	"X-Auth-Request-Preferred-Username",
	"X-Auth-Request-Groups",
}

// hidden request headers: credentials.
var hidden = map[string]bool{"Authorization": true, "Cookie": true, "Proxy-Authorization": true}

type bearer struct {
	Prefix string `json:"prefix"` // the token's first 10 characters
	Length int    `json:"length"` // in bytes
}

type whoami struct {
	Authenticated bool              `json:"authenticated"` // X-Auth-Request-User present
	Identity      map[string]string `json:"identity"`      // identityHeaders; "" when absent
	Bearer        *bearer           `json:"bearer"`        // null without "Authorization: Bearer ..."
	Authorization string            `json:"authorization"` // the scheme of another Authorization header
	Headers       map[string]string `json:"headers"`       // all but the hidden ones
	Method        string            `json:"method"`
	Path          string            `json:"path"`
}

func describe(r *http.Request) whoami {
	v := whoami{
		Identity: map[string]string{},
		Headers:  map[string]string{},
		Method:   r.Method,
		Path:     r.URL.RequestURI(),
	}
	for _, h := range identityHeaders {
		v.Identity[h] = r.Header.Get(h)
	}
	v.Authenticated = r.Header.Get("X-Auth-Request-User") != ""
	if a := r.Header.Get("Authorization"); a != "" {
		scheme, tok, _ := strings.Cut(a, " ")
		if strings.EqualFold(scheme, "Bearer") {
			tok = strings.TrimSpace(tok)
			v.Bearer = &bearer{Prefix: firstRunes(tok, 10), Length: len(tok)}
		} else {
			v.Authorization = scheme + " (credentials hidden)"
		}
	}
	for name, vals := range r.Header {
		if !hidden[name] {
			v.Headers[name] = strings.Join(vals, ", ")
		}
	}
	return v
}

type row struct{ Name, Value string }

// IdentityRows are the identity headers in identityHeaders' order.
func (v whoami) IdentityRows() []row {
	var rows []row
	for _, h := range identityHeaders {
		rows = append(rows, row{h, v.Identity[h]})
	}
	return rows
}

// HeaderRows are the shown request headers sorted by name.
func (v whoami) HeaderRows() []row {
	var rows []row
	for name, val := range v.Headers {
		rows = append(rows, row{name, val})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	return rows
}

// Name is what the page calls the user.
func (v whoami) Name() string {
	for _, h := range []string{"X-Auth-Request-Preferred-Username", "X-Auth-Request-Email", "X-Auth-Request-User"} {
		if v.Identity[h] != "" {
			return v.Identity[h]
		}
	}
	return "stranger"
}

func firstRunes(s string, n int) string {
	for i := range s {
		if n == 0 {
			return s[:i]
		}
		n--
	}
	return s
}

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>caddy-oidc demo app</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,sans-serif;max-width:52em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;width:100%;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top;word-break:break-all}
th{background:#f4f4f4;width:18em;word-break:normal}
code{background:#f4f4f4;padding:0 .2em}
nav{display:flex;gap:1em;align-items:center}
</style></head>
<body>
<h1>Hello, <span id="user">{{.Name}}</span></h1>
<p>This page comes from a small app that knows nothing about OpenID Connect.
{{if .Authenticated}}Caddy's <code>oidc</code> handler logged you in and sent it these identity headers:
{{else}}<strong>No identity headers arrived:</strong> open this app through Caddy (http://127.0.0.1:8080).
{{end}}</p>
<table id="identity">
{{range .IdentityRows}}<tr><th>{{.Name}}</th><td>{{or .Value "(not sent)"}}</td></tr>
{{end}}<tr><th>Authorization</th><td id="bearer">{{with .Bearer}}Bearer <code>{{.Prefix}}…</code> ({{.Length}} characters)
{{else}}{{or $.Authorization "(no Bearer token)"}}{{end}}</td></tr>
</table>
<nav>
<a href="/auth/userinfo">/auth/userinfo</a>
<a href="/api/whoami">/api/whoami</a>
<form method="post" action="/auth/logout"><button type="submit" id="logout">Log out</button></form>
</nav>
<h2>All request headers</h2>
<p>Except <code>Authorization</code> and <code>Cookie</code>.</p>
<table id="headers">
{{range .HeaderRows}}<tr><th>{{.Name}}</th><td>{{.Value}}</td></tr>
{{end}}</table>
<p><small>{{.Method}} {{.Path}}</small></p>
</body></html>
`))

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "listen address")
	flag.Parse()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/whoami", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(describe(r))
	})
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		if err := page.Execute(w, describe(r)); err != nil {
			log.Printf("page: %v", err)
		}
	})

	srv := &http.Server{Addr: *addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Printf("demo upstream on http://%s", *addr)
	log.Fatal(srv.ListenAndServe())
}
