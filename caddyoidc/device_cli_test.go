package caddyoidc

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

// TestOIDCLoginRefusesHTTP: `caddy oidc-login` refuses to send the device
// code and receive a token over plain http (loopback included) unless
// --insecure says so.
func TestOIDCLoginRefusesHTTP(t *testing.T) {
	for _, tt := range []struct {
		url      string
		insecure bool
		want     string // "" for accepted
	}{
		{"https://files.example.com/", false, ""},
		{"https://files.example.com:8443", false, ""},
		{"http://files.example.com", false, "--insecure"},
		{"http://127.0.0.1:8080", false, "--insecure"},
		{"http://localhost", false, "--insecure"},
		{"http://[::1]:80", false, "--insecure"},
		{"http://127.0.0.1:8080", true, ""},
		{"ftp://files.example.com", true, "not an https:// site URL"},
		{"files.example.com", false, "not an https:// site URL"},
		{"https://user:pw@files.example.com", false, "not an https:// site URL"},
		{"https://", false, "not an https:// site URL"},
	} {
		site, err := checkSiteURL(tt.url, tt.insecure)
		switch {
		case tt.want == "" && (err != nil || site != strings.TrimSuffix(tt.url, "/")):
			t.Errorf("%s (insecure %v): %q, %v", tt.url, tt.insecure, site, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s (insecure %v): %v, want an error with %q", tt.url, tt.insecure, err, tt.want)
		}
	}
}

// TestOIDCLoginCommandRefusesHTTP: the command itself fails before any
// request to an http:// site (the site would see one).
func TestOIDCLoginCommandRefusesHTTP(t *testing.T) {
	hits := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hits++ }))
	defer srv.Close()
	fs := (&cobra.Command{}).Flags()
	fs.Bool("print", false, "")
	fs.Bool("force", false, "")
	fs.Bool("insecure", false, "")
	fs.String("client-id", "caddy oidc-login", "")
	fs.String("routes", defaultRoutes, "")
	if err := fs.Parse([]string{srv.URL}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	code, err := cmdOIDCLogin(caddycmd.Flags{FlagSet: fs})
	if err == nil || code == 0 || !strings.Contains(err.Error(), "--insecure") || hits != 0 {
		t.Fatalf("http site: exit %d, %v, %d requests", code, err, hits)
	}
}

// TestOIDCLoginNoDowngradeRedirect: an https site redirecting the CLI to
// http:// is not followed, unless --insecure.
func TestOIDCLoginNoDowngradeRedirect(t *testing.T) {
	to := func(u string) *http.Request { p, _ := url.Parse(u); return &http.Request{URL: p} }
	if err := noDowngrade(false)(to("http://evil.example/x"), []*http.Request{to("https://site/x")}); err == nil {
		t.Fatal("redirect to http followed")
	}
	if err := noDowngrade(false)(to("https://site/y"), []*http.Request{to("https://site/x")}); err != nil {
		t.Fatalf("https redirect: %v", err)
	}
	if err := noDowngrade(true)(to("http://site/y"), []*http.Request{to("http://site/x")}); err != nil {
		t.Fatalf("--insecure: %v", err)
	}
}

// TestOIDCLoginExplainsRefusals: a rate-limited or refused start tells the
// user why, instead of blaming the site's configuration.
func TestOIDCLoginExplainsRefusals(t *testing.T) {
	for _, tt := range []struct {
		status int
		body   string
		want   string
	}{
		{429, `{"error":"slow_down"}`, "limiting device logins (slow_down)"},
		{400, `{"error":"invalid_client","error_description":"no"}`, `client name "cli"`},
		{400, `{"error":"unsupported_grant_type"}`, "does its oidc block have azat"},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Retry-After", "6")
			w.WriteHeader(tt.status)
			_, _ = w.Write([]byte(tt.body))
		}))
		_, err := deviceLogin(t.Context(), srv.Client(), srv.URL+"/auth", "", "cli", io.Discard, nil)
		srv.Close()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%d %s: %v, want %q", tt.status, tt.body, err, tt.want)
		}
	}
}
