package caddyoidc

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestSafeBack(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"/", "/"},
		{"/app?x=1#frag", "/app?x=1#frag"},
		{"/a/b/c", "/a/b/c"},
		{"", "/"},
		{"//evil.example", "/"},
		{"/\\evil.example", "/"},
		{"\\\\evil.example", "/"},
		{"https://evil.example/", "/"},
		{"http:evil.example", "/"},
		{"javascript:alert(1)", "/"},
		{"evil.example", "/"},
		{"/%2fevil.example", "/"},
		{"/%5cevil.example", "/"},
		{"/\tevil", "/"},
		{"/\r\nLocation: x", "/"},
		{"/a\\b", "/"},
		{"/" + strings.Repeat("a", 3000), "/"},
		{" /x", "/"},
	}
	for _, tt := range tests {
		if got := safeBack(tt.in); got != tt.want {
			t.Errorf("safeBack(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestChunkedCookies(t *testing.T) {
	opts := cookieOpts{secure: true, sameSite: http.SameSiteLaxMode, base: "c"}
	value := strings.Repeat("v", maxChunkSize*2+10)
	rec := httptest.NewRecorder()
	if !writeChunked(rec, httptest.NewRequest("GET", "/", nil), opts, value, 60) {
		t.Fatal("write failed")
	}
	cookies := rec.Result().Cookies()
	if len(cookies) != 3 {
		t.Fatalf("got %d chunks, want 3", len(cookies))
	}
	req := httptest.NewRequest("GET", "/", nil)
	for _, c := range cookies {
		if !c.HttpOnly || !c.Secure || c.SameSite != http.SameSiteLaxMode {
			t.Fatalf("cookie attributes: %+v", c)
		}
		if len(c.String()) > 4096 {
			t.Fatalf("cookie over 4096 bytes: %d", len(c.String()))
		}
		req.AddCookie(c)
	}
	if got := readChunked(req, opts); got != value {
		t.Fatal("reassembled value differs")
	}
	// Shrinking deletes the surplus chunks the request carried.
	rec = httptest.NewRecorder()
	writeChunked(rec, req, opts, "small", 60)
	deleted := map[string]bool{}
	for _, c := range rec.Result().Cookies() {
		if c.MaxAge < 0 {
			deleted[c.Name] = true
		}
	}
	if len(deleted) != 2 || !deleted["c_1"] || !deleted["c_2"] {
		t.Fatalf("deleted %v, want c_1 and c_2", deleted)
	}
	// Too many chunks are refused on write and on read.
	if writeChunked(httptest.NewRecorder(), req, opts, strings.Repeat("v", maxChunkSize*maxChunks+1), 60) {
		t.Fatal("oversized value written")
	}
	big := httptest.NewRequest("GET", "/", nil)
	for i := 0; i <= maxChunks; i++ {
		big.AddCookie(&http.Cookie{Name: chunkName("c", i), Value: "x"})
	}
	if readChunked(big, opts) != "" {
		t.Fatal("read more than maxChunks")
	}
}

func TestLookupClaim(t *testing.T) {
	claims := map[string]any{
		"groups":                       []any{"admin", "users"},
		"realm_access":                 map[string]any{"roles": []any{"r1"}},
		"https://hasura.io/jwt/claims": map[string]any{"x-hasura-allowed-roles": []any{"user", "editor"}},
		"a.b":                          "dotted",
	}
	tests := []struct {
		path []string
		want []string
	}{
		{[]string{"groups"}, []string{"admin", "users"}},
		{[]string{"realm_access", "roles"}, []string{"r1"}},
		{[]string{"realm_access.roles"}, []string{"r1"}},
		{[]string{"https://hasura.io/jwt/claims", "x-hasura-allowed-roles"}, []string{"user", "editor"}},
		{[]string{"https://hasura.io/jwt/claims.x-hasura-allowed-roles"}, []string{"user", "editor"}},
		{[]string{"a.b"}, []string{"dotted"}},
		{[]string{"missing"}, nil},
		{[]string{"groups", "x"}, nil},
	}
	for _, tt := range tests {
		got := claimStrings(lookupClaim(claims, tt.path))
		if strings.Join(got, ",") != strings.Join(tt.want, ",") {
			t.Errorf("lookup %v = %v, want %v", tt.path, got, tt.want)
		}
	}
}

func TestClaimRules(t *testing.T) {
	o := &OIDC{Provider: Provider{RequireRoles: [][]string{{"admin", "ops"}}, RequireClaims: []ClaimRule{{Path: "email_verified", Values: []string{"true"}}}}}
	tests := []struct {
		name string
		id   *identity
		ok   bool
	}{
		{"role and claim", &identity{Roles: []string{"ops"}, Claims: map[string]any{"email_verified": true}}, true},
		{"no role", &identity{Roles: []string{"users"}, Claims: map[string]any{"email_verified": true}}, false},
		{"claim false", &identity{Roles: []string{"admin"}, Claims: map[string]any{"email_verified": false}}, false},
		{"claim missing", &identity{Roles: []string{"admin"}, Claims: map[string]any{}}, false},
	}
	for _, tt := range tests {
		if got := o.checkRules(tt.id) == ""; got != tt.ok {
			t.Errorf("%s: allowed=%v, want %v", tt.name, got, tt.ok)
		}
	}
}

func TestIsNavigation(t *testing.T) {
	tests := []struct {
		method, mode, accept string
		want                 bool
	}{
		{"GET", "navigate", "text/html", true},
		{"GET", "cors", "text/html", false},
		{"GET", "", "text/html,application/xhtml+xml", true},
		{"GET", "", "application/json", false},
		{"GET", "", "*/*", false},
		{"POST", "navigate", "text/html", false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest(tt.method, "/", nil)
		if tt.mode != "" {
			r.Header.Set("Sec-Fetch-Mode", tt.mode)
		}
		r.Header.Set("Accept", tt.accept)
		if got := isNavigation(r); got != tt.want {
			t.Errorf("%+v: got %v", tt, got)
		}
	}
}

func TestHeaderValueStripsControlCharacters(t *testing.T) {
	if got := headerValue("a\r\nX-Evil: 1"); got != "aX-Evil: 1" {
		t.Fatalf("got %q", got)
	}
	if got := headerValue([]any{"a", "b", 3.0}); got != "a,b,3" {
		t.Fatalf("got %q", got)
	}
}

func TestSameOrigin(t *testing.T) {
	tests := []struct {
		url, site, origin string
		want              bool
	}{
		{"http://example.com/auth/logout", "same-origin", "", true},
		{"http://example.com/auth/logout", "cross-site", "", false},
		{"http://example.com/auth/logout", "same-site", "", false},
		{"http://example.com/auth/logout", "", "http://example.com", true},
		{"http://example.com/auth/logout", "", "http://evil.example", false},
		{"http://example.com/auth/logout", "", "", true},
		// Behind a proxy that ended TLS, the page's https origin is ours.
		{"http://example.com/auth/logout", "", "https://example.com", true},
		// Over TLS, a page of http://example.com is another origin.
		{"https://example.com/auth/logout", "", "http://example.com", false},
		{"https://example.com/auth/logout", "", "https://example.com", true},
		{"https://example.com/auth/logout", "", "null", false},
	}
	for _, tt := range tests {
		r := httptest.NewRequest("POST", tt.url, nil)
		if tt.site != "" {
			r.Header.Set("Sec-Fetch-Site", tt.site)
		}
		if tt.origin != "" {
			r.Header.Set("Origin", tt.origin)
		}
		if got := sameOrigin(r); got != tt.want {
			t.Errorf("%+v: got %v", tt, got)
		}
	}
}

// TestClaimScalar: numbers render as JSON writes them, without exponent or
// needless fraction; small fractions are not rounded to 0.
func TestClaimScalar(t *testing.T) {
	tests := []struct {
		in   any
		want string
	}{
		{"x", "x"},
		{true, "true"},
		{float64(3), "3"},
		{float64(-42), "-42"},
		{0.5, "0.5"},
		{1e-7, "0.0000001"},
		{float64(1 << 53), "9007199254740992"},
		{1e21, "1000000000000000000000"},
		{[]any{"a"}, `["a"]`},
	}
	for _, tt := range tests {
		if got := claimScalar(tt.in); got != tt.want {
			t.Errorf("claimScalar(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
