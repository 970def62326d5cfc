package caddyoidc

import (
	"context"
	"crypto/tls"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

func TestCookieOptsHostPrefix(t *testing.T) {
	on, off := true, false
	tests := []struct {
		name   string
		tls    bool
		o      OIDC
		prefix string
	}{
		{"https, host-only", true, OIDC{}, hostPrefix},
		{"plain http", false, OIDC{}, ""},
		{"http forced Secure", false, OIDC{CookieSecure: &on}, hostPrefix},
		{"https forced not Secure", true, OIDC{CookieSecure: &off}, ""},
		{"cookie_domain", true, OIDC{CookieDomain: "example.com"}, ""},
		{"samesite none forces Secure", false, OIDC{CookieSameSite: "none"}, hostPrefix},
		{"cookie_host_prefix off", true, OIDC{CookieHostPrefix: &off}, ""},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "http://app.example.com/", nil)
		if tt.tls {
			r.TLS = &tls.ConnectionState{}
		}
		tt.o.CookieName = "caddy_oidc"
		c := tt.o.cookieOpts(r)
		if c.prefix != tt.prefix {
			t.Errorf("%s: prefix %q, want %q", tt.name, c.prefix, tt.prefix)
		}
		if c.prefix != "" && (!c.secure || c.domain != "" || c.path("/auth") != "/") {
			t.Errorf("%s: a __Host- cookie that browsers refuse: %+v", tt.name, c)
		}
		if got := c.name("_0"); got != tt.prefix+"caddy_oidc_0" {
			t.Errorf("%s: name %q", tt.name, got)
		}
	}
}

// TestReadChunkedRefusesTossedCookies: whatever a sibling subdomain adds
// beside the session chunks, the result is the session or no session,
// never a session of its choosing.
func TestReadChunkedRefusesTossedCookies(t *testing.T) {
	prefixed := cookieOpts{base: "caddy_oidc", prefix: hostPrefix}
	bare := cookieOpts{base: "caddy_oidc"}
	tests := []struct {
		name   string
		opts   cookieOpts
		header []string
		want   string
	}{
		{"one chunk", bare, []string{"caddy_oidc_0=ours"}, "ours"},
		{"two chunks any order", bare, []string{"caddy_oidc_1=B; a=1; caddy_oidc_0=A"}, "AB"},
		{"duplicate chunk 0, tossed one first", bare, []string{"caddy_oidc_0=theirs; caddy_oidc_0=ours"}, ""},
		{"duplicate chunk 0, ours first", bare, []string{"caddy_oidc_0=ours; caddy_oidc_0=theirs"}, ""},
		{"duplicate in a second Cookie line", bare, []string{"caddy_oidc_0=ours", "caddy_oidc_0=theirs"}, ""},
		{"duplicate, same value", bare, []string{"caddy_oidc_0=ours; caddy_oidc_0=ours"}, ""},
		{"duplicate, quoted", bare, []string{`caddy_oidc_0=ours; caddy_oidc_0="ours"`}, ""},
		{"duplicate middle chunk", bare, []string{"caddy_oidc_0=A; caddy_oidc_1=B; caddy_oidc_1=C"}, ""},
		{"index spelled with a leading zero", bare, []string{"caddy_oidc_0=A; caddy_oidc_01=B"}, ""},
		{"leading zero alone", bare, []string{"caddy_oidc_00=A"}, ""},
		{"index beyond maxChunks", bare, []string{"caddy_oidc_0=A; caddy_oidc_8=B"}, ""},
		{"gap", bare, []string{"caddy_oidc_0=A; caddy_oidc_2=C"}, ""},
		{"no chunk 0", bare, []string{"caddy_oidc_1=B"}, ""},
		{"empty chunk", bare, []string{"caddy_oidc_0=A; caddy_oidc_1="}, ""},
		{"prefixed", prefixed, []string{"__Host-caddy_oidc_0=ours"}, "ours"},
		{"bare chunk tossed beside __Host- is not read", prefixed, []string{"caddy_oidc_0=theirs; __Host-caddy_oidc_0=ours; caddy_oidc_1=x"}, "ours"},
		{"only a bare chunk under the prefix", prefixed, []string{"caddy_oidc_0=theirs"}, ""},
		{"__Host- chunk is not read without the prefix", bare, []string{"__Host-caddy_oidc_0=x"}, ""},
		{"duplicate __Host- chunk", prefixed, []string{"__Host-caddy_oidc_0=a; __Host-caddy_oidc_0=b"}, ""},
		{"names that merely start with ours", bare, []string{"caddy_oidc_0=A; caddy_oidc_prefs=1; caddy_oidc_0x=2; caddy_oidc_=3"}, "A"},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		r.Header["Cookie"] = tt.header
		if got := readChunked(r, tt.opts); got != tt.want {
			t.Errorf("%s: read %q, want %q", tt.name, got, tt.want)
		}
	}
}

// TestWriteChunkedExpiresTossedCopies: the jar is repaired on the next
// write: a duplicate copy is deleted under every Domain and Path it may
// have, our own copy is rewritten and not deleted after.
func TestWriteChunkedExpiresTossedCopies(t *testing.T) {
	opts := cookieOpts{base: "caddy_oidc", sameSite: http.SameSiteLaxMode}
	r := httptest.NewRequest("GET", "http://app.example.test/auth/callback", nil)
	r.Header.Set("Cookie", "caddy_oidc_0=theirs; caddy_oidc_0=ours; caddy_oidc_5=stray")
	w := httptest.NewRecorder()
	writeChunked(w, r, opts, "new", 60)
	type key struct{ name, domain, path string }
	deleted := map[key]bool{}
	setAt := -1
	for i, h := range w.Header().Values("Set-Cookie") {
		c, err := http.ParseSetCookie(h)
		if err != nil {
			t.Fatal(err)
		}
		if c.MaxAge < 0 {
			deleted[key{c.Name, c.Domain, c.Path}] = true
			if c.Name == "caddy_oidc_0" && c.Domain == "" && c.Path == "/" {
				t.Fatalf("our rewritten chunk is deleted after: %q", h)
			}
			continue
		}
		if c.Name != "caddy_oidc_0" || c.Value != "new" || c.Domain != "" || c.Path != "/" || setAt >= 0 {
			t.Fatalf("unexpected cookie %q", h)
		}
		setAt = i
	}
	for _, k := range []key{
		{"caddy_oidc_0", "example.test", "/"}, {"caddy_oidc_0", "example.test", "/auth"},
		{"caddy_oidc_0", "app.example.test", "/auth/callback"}, {"caddy_oidc_0", "", "/auth"},
		{"caddy_oidc_5", "", "/"}, {"caddy_oidc_5", "example.test", "/"}, {"caddy_oidc_5", "example.test", "/auth/"},
	} {
		if !deleted[k] {
			t.Errorf("no deletion for %+v (got %v)", k, deleted)
		}
	}
	if deleted[key{"caddy_oidc_0", "test", "/"}] {
		t.Error("deletion for a top-level domain")
	}
}

// TestStripCookies: exactly this module's cookies go, every other byte of
// the header stays.
func TestStripCookies(t *testing.T) {
	bare := cookieOpts{base: "caddy_oidc"}
	prefixed := cookieOpts{base: "caddy_oidc", prefix: hostPrefix}
	flow := "caddy_oidc_flow_AbCdEfGh-_012345"
	tests := []struct {
		name string
		opts cookieOpts
		in   []string
		want []string // nil: no Cookie header left
	}{
		{"nothing of ours: untouched", bare,
			[]string{`app=1;theme="dark" ;  x=y;`}, []string{`app=1;theme="dark" ;  x=y;`}},
		{"a chunk in the middle", bare,
			[]string{"a=1; caddy_oidc_0=secret; b=2"}, []string{"a=1; b=2"}},
		{"first and last", bare,
			[]string{"caddy_oidc_0=s; a=1;b=\"q\"; caddy_oidc_1=t"}, []string{"a=1;b=\"q\""}},
		{"everything ours", bare,
			[]string{"caddy_oidc_0=s; " + flow + "=f; caddy_oidc_access_token=t; caddy_oidc_id_token=i"}, nil},
		{"app cookies sharing the prefix stay", bare,
			[]string{"caddy_oidc_prefs=compact; caddy_oidc_0=s; caddy_oidc_flow_x=1; caddy_oidc_0x=2; caddy_oidc_=3; caddy_oidc=4"},
			[]string{"caddy_oidc_prefs=compact; caddy_oidc_flow_x=1; caddy_oidc_0x=2; caddy_oidc_=3; caddy_oidc=4"}},
		{"strays and tossed duplicates go too", bare,
			[]string{"caddy_oidc_0=a; caddy_oidc_0=b; caddy_oidc_8=c; caddy_oidc_01=d; app=1"}, []string{"app=1"}},
		{"both spellings under the prefix", prefixed,
			[]string{"__Host-caddy_oidc_0=s; caddy_oidc_0=legacy; __Host-" + flow + "=f; app=1"}, []string{"app=1"}},
		{"quoted values and odd spacing", bare,
			[]string{"a=\"1\" ;\tcaddy_oidc_0=\"s\";;b=2"}, []string{"a=\"1\" ;;b=2"}},
		{"several lines, one untouched", bare,
			[]string{"caddy_oidc_0=s", "a=1;  b=2", "caddy_oidc_1=t; c=3"}, []string{"a=1;  b=2", "c=3"}},
		{"pairs without =", bare,
			[]string{"junk; caddy_oidc_0=s; =x"}, []string{"junk; =x"}},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("GET", "/", nil)
		in := append([]string(nil), tt.in...)
		r.Header["Cookie"] = in
		stripCookies(r, tt.opts)
		got := r.Header["Cookie"]
		if strings.Join(got, "\n") != strings.Join(tt.want, "\n") || len(got) != len(tt.want) {
			t.Errorf("%s:\n got %q\nwant %q", tt.name, got, tt.want)
		}
		if strings.Join(in, "\n") != strings.Join(tt.in, "\n") {
			t.Errorf("%s: the original header slice was modified", tt.name)
		}
	}
}

// TestRemoveIdentityHeadersSpellings: a client's copy of an identity or
// claim header goes in every spelling that an upstream might read as the
// same header; other headers stay.
func TestRemoveIdentityHeadersSpellings(t *testing.T) {
	o := &OIDC{Provider: Provider{ClaimHeaders: map[string]string{"X-User-Name": "name"}}, rt: &runtime{}}
	o.rt.identityHeaders = newHeaderSet(o.ClaimHeaders)
	forged := []string{
		"X-Auth-Request-User", "x-auth-request-user", "X_Auth_Request_User", "X_AUTH_REQUEST_USER",
		"x.auth.request.user", "X-Auth_Request.User", "X-AUTH-REQUEST-EMAIL", "x_auth_request_groups",
		"X.Auth.Request.Preferred-Username", "X_Auth_Request_Access_Token", "X_User_Name", "x.user.name", "X-USER-NAME",
	}
	kept := []string{"X-Auth-Request-Users", "X-Auth-Request", "X-User-Names", "Accept", "X-Auth-Request-Userx", "Xx-User-Name"}
	r := httptest.NewRequest("GET", "/", nil)
	for _, h := range append(forged, kept...) {
		r.Header[h] = []string{"admin"}
	}
	o.removeIdentityHeaders(r)
	for _, h := range forged {
		if _, ok := r.Header[h]; ok {
			t.Errorf("forged %s reaches the upstream", h)
		}
	}
	for _, h := range kept {
		if _, ok := r.Header[h]; !ok {
			t.Errorf("unrelated %s removed", h)
		}
	}
	// Nothing to remove: no allocation.
	clean := httptest.NewRequest("GET", "/", nil)
	for _, h := range kept {
		clean.Header[h] = []string{"v"}
	}
	if n := testing.AllocsPerRun(100, func() { o.removeIdentityHeaders(clean) }); n != 0 {
		t.Errorf("%v allocations with nothing to remove", n)
	}
}

// TestServeHTTPRemovesForgedIdentityHeaders goes through the handler itself
// (not Caddy's server, which happens to drop names with '_' or '.'): forged
// identity and claim headers in other spellings never reach the next
// handler, for a session and for an anonymous request.
func TestServeHTTPRemovesForgedIdentityHeaders(t *testing.T) {
	e, err := benchEnvOnce()
	if err != nil {
		t.Fatal(err)
	}
	o := &OIDC{Provider: Provider{Issuer: e.op.Issuer, ClientID: testop.WebClientID, ClientSecret: testop.WebClientSecret, ClaimHeaders: map[string]string{"X-User-Name": "name"}},
		CookieSecret: strings.Repeat("s", 32), AllowAnonymous: true}
	if err := o.provision(context.Background(), zap.NewNop(), &certmagic.FileStorage{Path: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{"iss": e.op.Issuer, "sub": "id1", "email": "test-user@zitadel.ch", "name": "Test User",
		"groups": []any{"admin", "users"}}
	now := time.Now()
	s := &session{ID: "sid", AccessToken: e.bearer, TokenType: "Bearer", Expiry: now.Add(time.Hour).Unix(),
		Created: now.Unix(), Identity: newIdentity(claims, o.RolesClaim, nil)}
	cookie := chunkName(o.CookieName, 0) + "=" + o.rt.sealer.Seal(encodeSession(s), o.rt.sessions.purpose())

	forged := []string{"X_Auth_Request_User", "x.auth.request.user", "X-Auth_Request.User", "X_AUTH_REQUEST_EMAIL",
		"x_auth_request_groups", "X.Auth.Request.Preferred.Username", "X_Auth_Request_Access_Token", "X_User_Name", "x.user.name"}
	for _, tt := range []struct {
		name, cookie string
		want         map[string]string
	}{
		{"session", cookie, map[string]string{headerUser: "id1", headerEmail: "test-user@zitadel.ch",
			headerGroups: "admin,users", "X-User-Name": "Test User"}},
		{"anonymous", "", map[string]string{}},
	} {
		r := benchRequest()
		for _, h := range forged {
			r.Header[h] = []string{"admin"}
		}
		if tt.cookie != "" {
			r.Header.Set("Cookie", tt.cookie)
		}
		var got http.Header
		next := caddyhttp.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) error { got = r.Header.Clone(); return nil })
		if err := o.ServeHTTP(httptest.NewRecorder(), r, next); err != nil || got == nil {
			t.Fatalf("%s: next not called (%v)", tt.name, err)
		}
		hs := newHeaderSet(o.ClaimHeaders)
		for k, v := range got {
			if !hs.has(k) {
				continue
			}
			if want, ok := tt.want[k]; !ok || len(v) != 1 || v[0] != want {
				t.Errorf("%s: next handler gets %s: %q", tt.name, k, v)
			}
		}
		for k, v := range tt.want {
			if got.Get(k) != v {
				t.Errorf("%s: %s = %q, want %q", tt.name, k, got.Get(k), v)
			}
		}
	}
}

// TestChunkCandidates: logout's list of the values duplicated chunks could
// form (never used on the request path).
func TestChunkCandidates(t *testing.T) {
	opts := cookieOpts{base: "c", sameSite: http.SameSiteLaxMode}
	for _, tt := range []struct {
		cookie string
		want   []string
	}{
		{"c_0=a", []string{"a"}},
		{"c_0=a; c_0=t", []string{"a", "t"}},
		{"c_0=a; c_1=b; c_1=x", []string{"a", "ab", "ax"}},
		{"c_0=a; c_0=a", []string{"a"}},
		{"c_1=b", nil},                              // no chunk 0
		{"other=1", nil},                            // none of ours
		{"c_0=a; c_2=b; c_0=t", []string{"a", "t"}}, // a gap at 1
		{"c_0=; c_0=a", []string{"a"}},              // empty values are no candidate
	} {
		r := httptest.NewRequest("POST", "http://app.example/auth/logout", nil)
		r.Header.Set("Cookie", tt.cookie)
		if got, complete := chunkCandidates(r, opts); !slices.Equal(got, tt.want) || !complete {
			t.Errorf("%q: %q, want %q", tt.cookie, got, tt.want)
		}
	}
	// Bounded however many duplicates arrive.
	r := httptest.NewRequest("POST", "http://app.example/auth/logout", nil)
	var h []string
	for i := 0; i < 8; i++ {
		for j := 0; j < 10; j++ {
			h = append(h, "c_"+strconv.Itoa(i)+"=v"+strconv.Itoa(j))
		}
	}
	r.Header.Set("Cookie", strings.Join(h, "; "))
	if got, complete := chunkCandidates(r, opts); len(got) > maxCandidates || complete {
		t.Fatalf("%d candidates (complete %v), want at most %d and incomplete", len(got), complete, maxCandidates)
	}
}
