// Command upstream is the demo's application behind Caddy: a page that shows
// who the user is and which headers the proxy sent. It knows nothing about
// OpenID Connect.
package main

import (
	"encoding/json"
	"flag"
	"html/template"
	"log"
	"net/http"
	"sort"
	"strings"
)

var identityHeaders = []string{
	"X-Auth-Request-User", "X-Auth-Request-Email",
	"X-Auth-Request-Preferred-Username", "X-Auth-Request-Groups",
}

type view struct {
	Identity map[string]string `json:"identity"`
	Bearer   string            `json:"bearer"` // first characters only
	Headers  map[string]string `json:"headers"`
	Path     string            `json:"path"`
}

func describe(r *http.Request) view {
	v := view{Identity: map[string]string{}, Headers: map[string]string{}, Path: r.URL.RequestURI()}
	for _, h := range identityHeaders {
		v.Identity[h] = r.Header.Get(h)
	}
	if a := r.Header.Get("Authorization"); strings.HasPrefix(a, "Bearer ") {
		tok := strings.TrimPrefix(a, "Bearer ")
		v.Bearer = tok[:min(10, len(tok))] + "... (" + itoa(len(tok)) + " characters)"
	}
	for k := range r.Header {
		if k == "Authorization" || k == "Cookie" {
			continue // never display credentials
		}
		v.Headers[k] = r.Header.Get(k)
	}
	return v
}

func itoa(n int) string { b, _ := json.Marshal(n); return string(b) }

var page = template.Must(template.New("page").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Demo upstream</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:50em;margin:2em auto">
<h1>Hello, <span id="user">{{index .Identity "X-Auth-Request-Preferred-Username"}}</span></h1>
<p>This page is served by an app that knows nothing about OpenID Connect. Caddy's <code>oidc</code>
handler logged you in and sent these identity headers:</p>
<table border="1" cellpadding="4">{{range $k, $v := .Identity}}<tr><th align="left">{{$k}}</th><td>{{$v}}</td></tr>{{end}}
<tr><th align="left">Authorization</th><td>{{if .Bearer}}Bearer {{.Bearer}}{{else}}(none){{end}}</td></tr></table>
<p><a href="/auth/userinfo">/auth/userinfo</a> &middot; <a href="/api/whoami">/api/whoami</a></p>
<form method="post" action="/auth/logout"><button type="submit">Log out</button></form>
<h2>All request headers</h2>
<table border="1" cellpadding="4">{{range .Sorted}}<tr><th align="left">{{.K}}</th><td>{{.V}}</td></tr>{{end}}</table>
</body></html>`))

type kv struct{ K, V string }

func main() {
	addr := flag.String("addr", "127.0.0.1:8081", "listen address")
	flag.Parse()
	mux := http.NewServeMux()
	mux.HandleFunc("/api/whoami", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(describe(r))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		v := describe(r)
		var sorted []kv
		for k, val := range v.Headers {
			sorted = append(sorted, kv{k, val})
		}
		sort.Slice(sorted, func(i, j int) bool { return sorted[i].K < sorted[j].K })
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_ = page.Execute(w, struct {
			view
			Sorted []kv
		}{v, sorted})
	})
	log.Printf("demo upstream on http://%s", *addr)
	log.Fatal(http.ListenAndServe(*addr, mux))
}
