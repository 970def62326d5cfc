package caddyoidc

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"strings"
)

// isNavigation tells a browser navigation (which gets redirected to login)
// from an API call (which gets 401): Sec-Fetch-Mode when the browser sends
// fetch metadata, else an Accept header that asks for HTML.
func isNavigation(r *http.Request) bool {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	if m := r.Header.Get("Sec-Fetch-Mode"); m != "" {
		return m == "navigate"
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// writeJSON writes v as JSON with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type oauthError struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description,omitempty"`
}

var errorPageTmpl = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{.Title}}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>{{.Title}}</h1><p>{{.Reason}}</p>{{if .Login}}<p><a href="{{.Login}}">Log in again</a></p>{{end}}
</body></html>`))

// pageHeaders sets the headers of every HTML page of the handler: never
// cached, never framed, no script, and forms that post only to formAction
// (a CSP source list: 'none', 'self', plus the origins a form's redirects
// go to).
func pageHeaders(w http.ResponseWriter, formAction string) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; form-action "+formAction)
}

// writePage writes a small HTML page for browsers.
func writePage(w http.ResponseWriter, status int, title, reason, login string) {
	pageHeaders(w, "'none'")
	w.WriteHeader(status)
	_ = errorPageTmpl.Execute(w, struct{ Title, Reason, Login string }{title, reason, login})
}

// writeError answers an error the way the caller understands: a page for
// navigations, an OAuth-style JSON body otherwise.
func (o *OIDC) writeError(w http.ResponseWriter, r *http.Request, status int, code, desc string) {
	if status == http.StatusServiceUnavailable || status == http.StatusBadGateway {
		w.Header().Set("Retry-After", "5")
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", o.challenge(r, code, desc))
	}
	if isNavigation(r) {
		writePage(w, status, http.StatusText(status), desc, "")
		return
	}
	writeJSON(w, status, oauthError{Error: code, ErrorDescription: desc})
}

// challenge builds the WWW-Authenticate value (RFC 6750 §3).
func (o *OIDC) challenge(r *http.Request, code, desc string) string {
	c := fmt.Sprintf("Bearer realm=%q", realm(r))
	if code != "" && code != "unauthorized" {
		c += fmt.Sprintf(", error=%q", code)
		if desc != "" {
			c += fmt.Sprintf(", error_description=%q", strings.ReplaceAll(desc, `"`, `'`))
		}
	}
	return c
}

func realm(r *http.Request) string {
	return strings.Map(func(c rune) rune {
		if c < 0x21 || c == '"' || c == '\\' || c > 0x7e {
			return -1
		}
		return c
	}, r.Host)
}

// unauthenticated redirects navigations to login and answers 401 otherwise.
func (o *OIDC) unauthenticated(w http.ResponseWriter, r *http.Request, code, desc string) {
	if isNavigation(r) && code == "unauthorized" && !o.BearerOnly {
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, o.loginURL(r, r.URL.RequestURI()), http.StatusFound)
		return
	}
	o.writeError(w, r, http.StatusUnauthorized, code, desc)
}

// loginURL is the login route's URL returning to back (made safe). On a
// site with several providers, a request that held a session of this one
// (and of no other) logs in here again; any other gets the chooser (or the
// default): with two providers' cookies, one may be tossed in, and it must
// not choose where the user logs in.
func (o *OIDC) loginURL(r *http.Request, back string) string {
	u := o.Routes + "/login?"
	if o.rt != nil && o.rt.providerQuery != "" {
		if _, _, _, present := scanChunks(r, o.cookieOpts(r), nil); present && !o.siblingChunks(r) {
			u += o.rt.providerQuery + "&"
		}
	}
	return u + "back=" + url.QueryEscape(safeBack(back))
}

// origin is the request's scheme://host.
func origin(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}
