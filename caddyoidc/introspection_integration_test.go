package caddyoidc_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// fakeIntrospection is an RFC 7662 endpoint whose answers the test sets per
// token (unknown tokens are inactive); it counts calls per token and can
// hold calls until released.
type fakeIntrospection struct {
	*httptest.Server
	mu      sync.Mutex
	answers map[string]map[string]any
	calls   map[string]int
	gate    chan struct{} // when set, calls wait until it is closed
	started chan string   // when set, receives each call's token
}

func newFakeIntrospection(t *testing.T) *fakeIntrospection {
	f := &fakeIntrospection{answers: map[string]map[string]any{}, calls: map[string]int{}}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.PostForm.Get("token") == "" {
			w.WriteHeader(400)
			return
		}
		tok := r.PostForm.Get("token")
		f.mu.Lock()
		f.calls[tok]++
		gate, started := f.gate, f.started
		answer, ok := f.answers[tok]
		f.mu.Unlock()
		if started != nil {
			started <- tok
		}
		if gate != nil {
			<-gate
		}
		if !ok {
			answer = map[string]any{"active": false}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(func() {
		f.mu.Lock()
		if f.gate != nil {
			select {
			case <-f.gate:
			default:
				close(f.gate)
			}
		}
		f.mu.Unlock()
		f.Close()
	})
	return f
}

// activate makes tok an active access token of the web client for sub;
// mut changes the answer.
func (f *fakeIntrospection) activate(op *testop.OP, tok, sub string, mut func(map[string]any)) {
	a := map[string]any{"active": true, "sub": sub, "client_id": testop.WebClientID, "aud": []string{testop.WebClientID},
		"iss": op.Issuer, "exp": time.Now().Add(time.Hour).Unix(), "token_type": "Bearer"}
	if mut != nil {
		mut(a)
	}
	f.mu.Lock()
	f.answers[tok] = a
	f.mu.Unlock()
}

func (f *fakeIntrospection) deactivate(tok string) {
	f.mu.Lock()
	f.answers[tok] = map[string]any{"active": false}
	f.mu.Unlock()
}

func (f *fakeIntrospection) count(tok string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[tok]
}

// TestIntrospectionRevocationSeen: a token revoked at the provider (its
// introspection turns inactive) is refused once introspection_cache has
// passed, not at the token's exp; the inactive answer is then cached (no
// provider call per request).
func TestIntrospectionRevocationSeen(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	f := newFakeIntrospection(t)
	site := startCaddy(t, oidcBlock(op, "introspection "+f.URL, "introspection_cache 1s"), up, "")
	f.activate(op, "opaque-revoked", "u1", nil)
	if resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer opaque-revoked"); resp.StatusCode != 200 {
		t.Fatalf("active token: %d", resp.StatusCode)
	}
	if up.header().Get("X-Auth-Request-User") != "u1" {
		t.Fatalf("upstream user %q", up.header().Get("X-Auth-Request-User"))
	}
	f.deactivate("opaque-revoked") // revoked at the provider; exp is an hour away
	time.Sleep(1200 * time.Millisecond)
	for range 5 {
		resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer opaque-revoked")
		if resp.StatusCode != 401 || !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
			t.Fatalf("revoked token after introspection_cache: %d", resp.StatusCode)
		}
	}
	if n := f.count("opaque-revoked"); n != 2 {
		t.Fatalf("%d introspection calls, want 2 (active, then inactive cached)", n)
	}
}

// TestIntrospectionSingleflight: 50 concurrent requests carrying one unknown
// token make one provider call; so do 50 with one valid token.
func TestIntrospectionSingleflight(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	f := newFakeIntrospection(t)
	site := startCaddy(t, oidcBlock(op, "introspection "+f.URL), up, "")
	f.activate(op, "opaque-valid", "u1", nil)
	for _, tt := range []struct {
		token  string
		status int
	}{{"opaque-unknown", 401}, {"opaque-valid", 200}} {
		gate, started := make(chan struct{}), make(chan string, 64)
		f.mu.Lock()
		f.gate, f.started = gate, started
		f.mu.Unlock()
		var wg sync.WaitGroup
		statuses := make(chan int, 50)
		for range 50 {
			wg.Go(func() {
				req, _ := http.NewRequest("GET", site.URL+"/api", nil)
				req.Header.Set("Authorization", "Bearer "+tt.token)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Error(err)
					return
				}
				resp.Body.Close()
				statuses <- resp.StatusCode
			})
		}
		<-started                          // the first call is at the provider
		time.Sleep(200 * time.Millisecond) // let the others arrive (they join it or find its answer cached)
		close(gate)
		wg.Wait()
		close(statuses)
		for s := range statuses {
			if s != tt.status {
				t.Fatalf("%s: status %d, want %d", tt.token, s, tt.status)
			}
		}
		if n := f.count(tt.token); n != 1 {
			t.Fatalf("%s: %d introspection calls for 50 concurrent requests, want 1", tt.token, n)
		}
		f.mu.Lock()
		f.gate, f.started = nil, nil
		f.mu.Unlock()
	}
}

// TestIntrospectionCallCap: with 32 introspection calls hanging at the
// provider, a request with yet another token answers 503 with Retry-After
// instead of queueing; once the provider answers, everything works.
func TestIntrospectionCallCap(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	f := newFakeIntrospection(t)
	site := startCaddy(t, oidcBlock(op, "introspection "+f.URL), up, "")
	const slots = 32
	gate, started := make(chan struct{}), make(chan string, slots+1)
	f.mu.Lock()
	f.gate, f.started = gate, started
	f.mu.Unlock()
	var wg sync.WaitGroup
	for i := range slots {
		tok := "opaque-" + itoa(i)
		f.activate(op, tok, "u"+itoa(i), nil)
		wg.Go(func() {
			req, _ := http.NewRequest("GET", site.URL+"/api", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("%s: %d after the provider answered", tok, resp.StatusCode)
			}
		})
	}
	for range slots {
		<-started
	}
	f.activate(op, "opaque-extra", "u-extra", nil)
	resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer opaque-extra")
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" ||
		!strings.Contains(body(t, resp), `"error":"temporarily_unavailable"`) {
		t.Fatalf("request beyond the call cap: %d Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if n := f.count("opaque-extra"); n != 0 {
		t.Fatalf("the extra token reached the provider %d times", n)
	}
	close(gate)
	wg.Wait()
	f.mu.Lock()
	f.gate, f.started = nil, nil
	f.mu.Unlock()
	if resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer opaque-extra"); resp.StatusCode != 200 {
		t.Fatalf("the extra token once calls are free: %d", resp.StatusCode)
	}
}

// TestIntrospectionTokenType: an active introspection answer about a token
// that is not an access token (a refresh token, a DPoP-bound token, a
// Keycloak ID token) is refused.
func TestIntrospectionTokenType(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := newUpstream(t)
	f := newFakeIntrospection(t)
	site := startCaddy(t, oidcBlock(op, "introspection "+f.URL), up, "")
	set := func(k string, v any) func(map[string]any) { return func(a map[string]any) { a[k] = v } }
	for _, tt := range []struct {
		name   string
		mut    func(map[string]any)
		status int
	}{
		{"token_type Bearer", nil, 200},
		{"token_type bearer", set("token_type", "bearer"), 200},
		{"token_type access_token", set("token_type", "access_token"), 200},
		{"no token_type", func(a map[string]any) { delete(a, "token_type") }, 200},
		{"token_type refresh_token", set("token_type", "refresh_token"), 401},
		{"token_type N_A", set("token_type", "N_A"), 401},
		{"token_type DPoP", set("token_type", "DPoP"), 401},
		{"token_type not a string", set("token_type", 1), 401},
		{"token_use refresh_token (Hydra)", set("token_use", "refresh_token"), 401},
		{"token_use access_token (Hydra)", set("token_use", "access_token"), 200},
		{"Keycloak typ Refresh", set("typ", "Refresh"), 401},
		{"Keycloak typ ID", set("typ", "ID"), 401},
		{"Keycloak typ Bearer", set("typ", "Bearer"), 200},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tok := "opaque-" + strings.ReplaceAll(tt.name, " ", "-")
			f.activate(op, tok, "u1", tt.mut)
			resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+tok)
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body(t, resp))
			}
		})
	}
}

// TestIntrospectionIdentityClaims: an active answer is an identity only
// with a subject (sub, or the client_id of a token without sub), the
// provider's iss when it names one, an exp in the future, and, with an
// audience configured, an aud naming it. An answer with an empty or
// non-string sub (which would authorize a user nobody can name, revoke or
// log out, or make a user's token its client's), a non-string iss or a
// missing aud with an audience configured is refused as any invalid token.
func TestIntrospectionIdentityClaims(t *testing.T) {
	set := func(k string, v any) func(map[string]any) { return func(a map[string]any) { a[k] = v } }
	del := func(ks ...string) func(map[string]any) {
		return func(a map[string]any) {
			for _, k := range ks {
				delete(a, k)
			}
		}
	}
	type answer struct {
		name   string
		mut    func(map[string]any)
		status int
		user   string // the upstream's X-Auth-Request-User on 200
		why    string // in the log line of a 401
	}
	op := startOP(t, testop.Options{})
	for _, site := range []struct {
		name  string
		extra []string
		cases []answer
	}{
		{"default audience", nil, []answer{
			{"sub", nil, 200, "u1", ""},
			{"empty sub", set("sub", ""), 401, "", "sub"},
			{"numeric sub", set("sub", 42), 401, "", "sub"},
			{"object sub", set("sub", map[string]any{"id": "u1"}), 401, "", "sub"},
			{"no sub: the client's token", del("sub"), 200, testop.WebClientID, ""},
			{"null sub: the client's token", set("sub", nil), 200, testop.WebClientID, ""},
			{"no sub, no client_id", del("sub", "client_id"), 401, "", "sub"},
			{"empty sub, no client_id", func(a map[string]any) { a["sub"] = ""; delete(a, "client_id") }, 401, "", "sub"},
			{"other iss", set("iss", "https://evil.example"), 401, "", "issuer"},
			{"non-string iss", set("iss", 1), 401, "", "issuer"},
			{"empty iss", set("iss", ""), 401, "", "issuer"},
			{"no iss: the provider's", del("iss"), 200, "u1", ""},
			{"exp past", set("exp", time.Now().Add(-time.Minute).Unix()), 401, "", "expired"},
			{"no exp", del("exp"), 401, "", "exp"},
			{"exp a string", set("exp", "9999999999"), 401, "", "exp"},
			{"other aud", set("aud", "other-api"), 401, "", "audience"},
			{"no aud, this client", del("aud"), 200, "u1", ""},
			{"no aud, other client", func(a map[string]any) { delete(a, "aud"); a["client_id"] = "other" }, 401, "", "another client"},
		}},
		{"audience configured", []string{"audience api://orders"}, []answer{
			{"aud names the API", set("aud", []string{"api://orders"}), 200, "u1", ""},
			{"aud is the client only", nil, 401, "", "audience"},
			{"no aud, this client", del("aud"), 401, "", "aud"},
		}},
	} {
		up := newUpstream(t)
		f := newFakeIntrospection(t)
		siteURL, logs := startCaddyLogged(t, oidcBlock(op, append([]string{"introspection " + f.URL}, site.extra...)...), up)
		for _, tt := range site.cases {
			t.Run(site.name+"/"+tt.name, func(t *testing.T) {
				tok := "opaque-" + strings.NewReplacer(" ", "-", ",", "", ":", "", "'", "").Replace(site.name+"-"+tt.name)
				f.activate(op, tok, "u1", tt.mut)
				resp := get(t, browser(), siteURL+"/api", "Authorization", "Bearer "+tok)
				if resp.StatusCode != tt.status {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tt.status, body(t, resp))
				}
				if tt.status == 401 && !strings.Contains(resp.Header.Get("WWW-Authenticate"), "invalid_token") {
					t.Fatalf("WWW-Authenticate %q", resp.Header.Get("WWW-Authenticate"))
				}
				if line := lastLine(logs(), "bearer token rejected"); tt.status == 401 && !strings.Contains(line, tt.why) {
					t.Fatalf("log line %q does not say %q", line, tt.why)
				}
				if got := up.header().Get("X-Auth-Request-User"); tt.status == 200 && got != tt.user {
					t.Fatalf("upstream user %q, want %q", got, tt.user)
				}
			})
		}
	}
}
