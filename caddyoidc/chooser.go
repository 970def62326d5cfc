package caddyoidc

import (
	"html/template"
	"net/http"
	"net/url"
)

// The chooser page: <routes>/login without a provider, on a site with
// several providers that offer login and no default_provider. Plain HTML in
// the style of the other pages: one link per provider (keyboard and screen
// readers follow links natively), no script, no form.

var chooserPage = template.Must(template.New("chooser").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<main><h1 id="choose">Log in</h1>
<p>Choose how to log in:</p>
<nav aria-labelledby="choose"><ul style="list-style:none;padding:0">
{{range .}}<li style="margin:0.5em 0"><a href="{{.URL}}" style="display:inline-block;padding:0.5em 1em;border:1px solid #555;border-radius:4px">Log in with {{.Label}}</a></li>
{{end}}</ul></nav></main>
</body></html>`))

// chooserEntry is one provider on the chooser page.
type chooserEntry struct{ URL, Label string }

// serveChooser shows the chooser page; each link starts the login at its
// provider, with the same back.
func (ps *providerSet) serveChooser(o *OIDC, w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "login takes GET")
		return
	}
	if len(ps.interactive) == 0 {
		o.writeError(w, r, http.StatusNotFound, "not_found", "no provider offers login here")
		return
	}
	back := safeBack(r.URL.Query().Get("back"))
	entries := make([]chooserEntry, 0, len(ps.interactive))
	for _, c := range ps.interactive {
		q := url.Values{"provider": {c.Name}, "back": {back}}
		label := c.Label
		if label == "" {
			label = c.Name
		}
		entries = append(entries, chooserEntry{URL: o.Routes + "/login?" + q.Encode(), Label: label})
	}
	pageHeaders(w, "'none'")
	_ = chooserPage.Execute(w, entries)
}
