package testlogin_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/caddy-oidc/caddy-oidc/internal/testlogin"
)

var errRefused = errors.New("refused")

// TestWalk: the walk posts the page's form, returns the callback without
// requesting it, reports an OAuth error redirect, ends on the page's error
// and on a redirect loop, and keeps the caller's client as it is.
func TestWalk(t *testing.T) {
	var rpHits atomic.Int32
	rp := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { rpHits.Add(1) }))
	defer rp.Close()
	// The provider: /authorize sets a cookie and redirects to the login
	// page; posting the page's form with the cookie redirects to
	// the RP's callback.
	prov := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/authorize":
			http.SetCookie(w, &http.Cookie{Name: "sid", Value: "s1", Path: "/"})
			http.Redirect(w, r, "/login", http.StatusFound)
		case "/login":
			if r.Method == http.MethodGet {
				w.Write([]byte("form"))
				return
			}
			ck, err := r.Cookie("sid")
			switch {
			case err != nil || ck.Value != "s1":
				http.Error(w, "no session cookie", http.StatusBadRequest)
			case r.PostFormValue("user") == "alice":
				http.Redirect(w, r, rp.URL+"/callback?code=c1&state=st", http.StatusFound)
			default:
				http.Redirect(w, r, rp.URL+"/callback?error=access_denied&error_description=no+alice", http.StatusFound)
			}
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
		default:
			http.NotFound(w, r)
		}
	}))
	defer prov.Close()

	page := func(user string) func(testlogin.Page) (*url.URL, url.Values, error) {
		return func(p testlogin.Page) (*url.URL, url.Values, error) {
			if p.OnProvider && p.Status == http.StatusOK && !p.Posted() && string(p.Body) == "form" {
				return p.URL, url.Values{"user": {user}}, nil
			}
			return nil, nil, errRefused
		}
	}
	tests := []struct {
		name, start, user string
		wantURL           string // prefix; "" for none
		wantErr           string // substring; "" for none
	}{
		{"login", prov.URL + "/authorize", "alice", rp.URL + "/callback?code=c1", ""},
		{"OAuth error redirect", prov.URL + "/authorize", "bob", rp.URL + "/callback?error=access_denied", `test: login: P redirected with error "access_denied": no alice`},
		{"page before the provider", rp.URL + "/start", "alice", "", "refused"},
		{"redirect loop", prov.URL + "/loop", "alice", "", "test: login: too many redirects"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			jar, _ := cookiejar.New(nil)
			client := &http.Client{Jar: jar}
			rpHits.Store(0)
			w := testlogin.Walker{Prefix: "test: login", Provider: "P", Issuer: prov.URL, Client: client, Page: page(tt.user)}
			got, err := w.Walk(context.Background(), tt.start)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
			if tt.wantErr == "refused" && !errors.Is(err, errRefused) {
				t.Fatalf("err %v is not the page's error", err)
			}
			if tt.wantURL != "" && !strings.HasPrefix(got, tt.wantURL) || tt.wantURL == "" && got != "" {
				t.Fatalf("callback %q, want %q...", got, tt.wantURL)
			}
			if tt.wantURL != "" && rpHits.Load() != 0 {
				t.Fatal("the callback was requested")
			}
			if client.CheckRedirect != nil {
				t.Fatal("the caller's client was changed")
			}
			if u, _ := url.Parse(prov.URL); tt.wantURL != "" && len(jar.Cookies(u)) != 1 {
				t.Fatalf("the caller's jar has %v", jar.Cookies(u))
			}
		})
	}
}
