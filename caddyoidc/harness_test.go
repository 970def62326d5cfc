package caddyoidc_test

import (
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/caddy-oidc/caddy-oidc/caddyoidc"
)

// upstream records what the proxied application receives.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	last http.Header
	hits int
}

func newUpstream(t *testing.T) *upstream {
	u := &upstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.mu.Lock()
		u.last = r.Header.Clone()
		u.hits++
		u.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"path": r.URL.RequestURI(),
			"user": r.Header.Get("X-Auth-Request-User"),
		})
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *upstream) header() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

func (u *upstream) count() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.hits
}

func freePort(t *testing.T) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// caddyInstance is Caddy running in this process with a Caddyfile.
type caddyInstance struct {
	URL     string
	Storage string
}

// startCaddy runs Caddy in-process with oidcBlock inside a site on a free
// loopback port that proxies to up. storageDir may be shared by callers.
func startCaddy(t *testing.T, oidcBlock string, up *upstream, storageDir string) *caddyInstance {
	t.Helper()
	return startCaddyOn(t, freePort(t), oidcBlock, up, storageDir)
}

// startCaddyOn is startCaddy on a given loopback port (a provider whose
// redirect URIs must match exactly needs the port first).
func startCaddyOn(t *testing.T, port int, oidcBlock string, up *upstream, storageDir string) *caddyInstance {
	t.Helper()
	return startCaddyAt(t, fmt.Sprintf("127.0.0.1:%d", port), oidcBlock, up, storageDir)
}

// startCaddyAt is startCaddy for the site http://hostPort (a host name
// other than 127.0.0.1 needs a client that resolves it to the loopback
// address).
func startCaddyAt(t *testing.T, hostPort, oidcBlock string, up *upstream, storageDir string) *caddyInstance {
	t.Helper()
	if storageDir == "" {
		storageDir = t.TempDir()
	}
	cf := fmt.Sprintf(`{
	admin off
	persist_config off
	auto_https off
	storage file_system %s
	log {
		output stderr
		level ERROR
	}
}
http://%s {
	%s
	reverse_proxy %s
}
`, storageDir, hostPort, oidcBlock, strings.TrimPrefix(up.URL, "http://"))
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatalf("adapt: %v\n%s", err, cf)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatalf("load: %v", err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	return &caddyInstance{URL: "http://" + hostPort, Storage: storageDir}
}

// browser is an HTTP client with a cookie jar that does not follow redirects.
func browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func get(t *testing.T, c *http.Client, url string, hdr ...string) *http.Response {
	t.Helper()
	return do(t, c, "GET", url, hdr...)
}

func do(t *testing.T, c *http.Client, method, url string, hdr ...string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func body(t *testing.T, resp *http.Response) string {
	t.Helper()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func requireBrowser() bool {
	return os.Getenv("CADDY_OIDC_REQUIRE_BROWSER") == "1" || os.Getenv("CI") == "true"
}

var navigate = []string{"Accept", "text/html", "Sec-Fetch-Mode", "navigate"}

// grepDir returns the first file under dir that contains s.
func grepDir(t *testing.T, dir, s string) string {
	t.Helper()
	var found string
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || found != "" {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), s) {
			found = p
		}
		return nil
	})
	return found
}

func caddyconfigAdapt(cf string) ([]byte, []caddyconfig.Warning, error) {
	return caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
}

// nsFile is the file of storage key caddy-oidc/<rel> of the one namespace
// under the storage dir.
func nsFile(t *testing.T, dir, rel string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(dir, "caddy-oidc", "ns", "*", filepath.FromSlash(rel)))
	if len(m) != 1 {
		t.Fatalf("storage key %s: %d matches", rel, len(m))
	}
	return m[0]
}
