// Command upstream is the application behind Caddy in the curl-manifest
// example: a file repository that, for a logged-in user, renders a `curl`
// command line which downloads a selection of files for days, although every
// identity provider access token lives an hour (the seed's manifest).
//
// The page's script asks Caddy for an AZAT (GET /auth/token, with the session
// cookie) and for a manifest (POST /api/manifest); the command line is
//
//	curl --fail '<site>/manifest/<key>' | curl --fail --header "Authorization: Bearer <AZAT>" --config -
//
// The manifest is a curl config (url/output lines) behind an unguessable key;
// the files themselves need the AZAT, which Caddy verifies and swaps for a
// fresh provider access token on the way here.
package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"html/template"
	"log"
	"net/http"
	"sort"
	"strings"
	"sync"
)

var files = map[string]string{
	"sample-1.fastq": "@read1\nACGTACGTACGT\n+\nIIIIIIIIIIII\n",
	"sample-2.fastq": "@read2\nTTGCAATTGCAA\n+\nIIIIIIIIIIII\n",
	"README.txt":     "Example data set served by the curl-manifest example.\n",
}

type server struct {
	mu        sync.Mutex
	manifests map[string][]string // key -> file names
}

func main() {
	addr := flag.String("addr", "127.0.0.1:8082", "listen address")
	flag.Parse()
	s := &server{manifests: map[string][]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.index)
	mux.HandleFunc("GET /files/{name}", s.file)
	mux.HandleFunc("POST /api/manifest", s.newManifest)
	mux.HandleFunc("GET /manifest/{key}", s.manifest)
	log.Printf("curl-manifest upstream on http://%s", *addr)
	log.Fatal(http.ListenAndServe(*addr, mux))
}

func names() []string {
	out := make([]string, 0, len(files))
	for n := range files {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// file serves a file; Caddy only lets authenticated requests through.
func (s *server) file(w http.ResponseWriter, r *http.Request) {
	body, ok := files[r.PathValue("name")]
	if !ok {
		http.NotFound(w, r)
		return
	}
	if r.Header.Get("X-Auth-Request-User") == "" || !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer ") {
		http.Error(w, "no identity from the proxy", http.StatusForbidden)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	fmt.Fprint(w, body)
}

// newManifest records a selection of files under a random key.
func (s *server) newManifest(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Files []string `json:"files"`
	}
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil || len(req.Files) == 0 {
		req.Files = names()
	}
	for _, f := range req.Files {
		if _, ok := files[f]; !ok {
			http.Error(w, "unknown file "+f, http.StatusBadRequest)
			return
		}
	}
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	key := base64.RawURLEncoding.EncodeToString(b)
	s.mu.Lock()
	s.manifests[key] = req.Files
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]string{"key": key, "path": "/manifest/" + key})
}

// manifest answers a curl config that downloads the manifest's files.
func (s *server) manifest(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	list, ok := s.manifests[r.PathValue("key")]
	s.mu.Unlock()
	if !ok {
		http.NotFound(w, r)
		return
	}
	origin := r.Header.Get("X-Forwarded-Proto") + "://" + r.Host
	if !strings.HasPrefix(origin, "http") {
		origin = "http://" + r.Host
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	for _, f := range list {
		fmt.Fprintf(w, "url = \"%s/files/%s\"\noutput = \"%s\"\n", origin, f, f)
	}
}

var page = template.Must(template.New("index").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Files</title></head>
<body style="font-family:sans-serif;max-width:60em;margin:2em auto">
<p>Logged in as <b id="user">{{.User}}</b> ({{.Email}}).
<form method="post" action="/auth/logout" style="display:inline"><button>Log out</button></form></p>
<h1>Files</h1>
<ul>{{range .Files}}<li><a href="/files/{{.}}">{{.}}</a></li>{{end}}</ul>
<h2>Download with curl</h2>
<p>This command line keeps working for days (until the token expires or you revoke it):</p>
<pre id="cmd" style="white-space:pre-wrap;background:#eee;padding:1em">preparing...</pre>
<form method="post" action="/auth/revoke" onsubmit="return confirm('Stop every command line you copied?')">
<button>Revoke all my command lines</button></form>
<script>
(async () => {
  const cmd = document.getElementById('cmd');
  const tok = await fetch('/auth/token', {credentials: 'same-origin'});
  const t = await tok.json();
  if (!tok.ok) { cmd.textContent = t.error_description || t.error; return; }
  const m = await (await fetch('/api/manifest', {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'}, body: '{}'})).json();
  cmd.textContent = "curl --fail '" + location.origin + m.path + "' | curl --fail --header 'Authorization: Bearer " +
    t.token + "' --config -";
})();
</script>
</body></html>`))

func (s *server) index(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = page.Execute(w, map[string]any{
		"User":  r.Header.Get("X-Auth-Request-Preferred-Username"),
		"Email": r.Header.Get("X-Auth-Request-Email"),
		"Files": names(),
	})
}
