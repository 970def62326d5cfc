package caddyoidc

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/testop"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// TestIntrospectionJunkBounded: a flood of made-up opaque tokens through
// the handler leaves at most the negative cache's bound in memory, and does
// not evict a verified token (which keeps being served without a call).
func TestIntrospectionJunkBounded(t *testing.T) {
	op, err := testop.Start(testop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Close() })
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_ = r.ParseForm()
		answer := map[string]any{"active": false}
		if r.PostForm.Get("token") == "good-token" {
			answer = map[string]any{"active": true, "sub": "u1", "client_id": testop.WebClientID, "iss": op.Issuer,
				"exp": time.Now().Add(time.Hour).Unix()}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(srv.Close)
	o := &OIDC{Provider: Provider{Issuer: op.Issuer, ClientID: testop.WebClientID, ClientSecret: testop.WebClientSecret, Introspection: true, IntrospectionEndpoint: srv.URL},
		CookieSecret: strings.Repeat("s", 32)}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := o.provision(ctx, zap.NewNop(), &certmagic.FileStorage{Path: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	const bound = 64
	o.rt.remote = newRemoteChecks(bound, maxRemoteCalls)
	serve := func(tok string) int {
		r := httptest.NewRequest("GET", "http://site.example/api", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		if err := o.ServeHTTP(w, r, nop); err != nil {
			t.Fatal(err)
		}
		return w.Code
	}
	if s := serve("good-token"); s != 200 {
		t.Fatalf("good token: %d", s)
	}
	for i := range 20 * bound {
		if s := serve("junk-" + itoa(int64(i))); s != 401 {
			t.Fatalf("junk token: %d", s)
		}
		if n := o.rt.remote.rejected.Len(); n > bound {
			t.Fatalf("%d rejected tokens held, bound %d", n, bound)
		}
	}
	if n := o.rt.introspected.Len(); n != 1 {
		t.Fatalf("%d verified tokens cached, want 1 (junk must not go there)", n)
	}
	before := calls.Load()
	if s := serve("good-token"); s != 200 || calls.Load() != before {
		t.Fatalf("good token after the flood: %d, %d more calls", s, calls.Load()-before)
	}
	// A junk token just seen is answered from the negative cache.
	if s := serve("junk-" + itoa(20*bound-1)); s != 401 || calls.Load() != before {
		t.Fatalf("repeated junk token: %d, %d more calls", s, calls.Load()-before)
	}
}

func TestIntrospectionCacheUntil(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	for _, tt := range []struct {
		exp  time.Time
		ttl  time.Duration
		want time.Time
	}{
		{now.Add(time.Hour), time.Minute, now.Add(time.Minute)},             // bounded by introspection_cache
		{now.Add(10 * time.Second), time.Minute, now.Add(10 * time.Second)}, // never past exp
		{now.Add(time.Hour), -time.Second, now},                             // negative: not cached
	} {
		if got := introspectionCacheUntil(now, tt.exp, tt.ttl); !got.Equal(tt.want) {
			t.Errorf("introspectionCacheUntil(exp %v, ttl %v) = %v, want %v", tt.exp.Sub(now), tt.ttl, got.Sub(now), tt.want.Sub(now))
		}
	}
}

func TestBearerOptionsValidate(t *testing.T) {
	base := func() *OIDC {
		return &OIDC{Provider: Provider{Issuer: "https://op.example", ClientID: "web", Scopes: []string{"openid"}}, Session: "cookie"}
	}
	for _, tt := range []struct {
		name string
		mut  func(*OIDC)
		ok   bool
	}{
		{"defaults", func(*OIDC) {}, true},
		{"require_typ at+jwt", func(o *OIDC) { o.RequireTyp = "at+jwt" }, true},
		{"require_typ logout+jwt", func(o *OIDC) { o.RequireTyp = "application/logout+jwt" }, false},
		{"bearer_id_token_shaped accept", func(o *OIDC) { o.BearerIDTokenShaped = "accept" }, true},
		{"bearer_id_token_shaped maybe", func(o *OIDC) { o.BearerIDTokenShaped = "maybe" }, false},
		{"mint_from_bearer without azat", func(o *OIDC) { o.MintFromBearer = true }, false},
	} {
		o := base()
		tt.mut(o)
		if err := o.validateBearer(); (err == nil) != tt.ok {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// TestTokeninfoCached: tokeninfo answers go through the same caches as
// introspection: one call per token, also for a rejected one.
func TestTokeninfoCached(t *testing.T) {
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		if r.PostForm.Get("access_token") != "ya29.good" {
			w.WriteHeader(400)
			_ = json.NewEncoder(w).Encode(map[string]any{"error": "invalid_token"})
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{"aud": "client-1", "sub": "123", "exp": itoa(time.Now().Add(time.Hour).Unix())})
	}))
	defer srv.Close()
	o := testOIDC(t)
	o.TokeninfoEndpoint = srv.URL
	o.rt.introspected = expiry.New[[32]byte, *identity](16)
	o.rt.remote = newRemoteChecks(16, 2)
	p := idp.New(idp.Config{}, idp.Metadata{Issuer: "https://accounts.google.com"})
	for range 3 {
		if id, err := o.verifyBearer(context.Background(), p, "ya29.good"); err != nil || id.Subject != "123" {
			t.Fatalf("good token: %v", err)
		}
		if _, err := o.verifyBearer(context.Background(), p, "ya29.bad"); err == nil {
			t.Fatal("bad token accepted")
		}
	}
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d tokeninfo calls for 3 requests with each of 2 tokens, want 2", n)
	}
}

// TestIntrospectionFloodBoundedPerHandler: an unauthenticated caller floods
// one handler with made-up opaque tokens that hang at the provider. At most
// maxRemoteCalls of them are at the provider at once (one call per token);
// the rest of the flood, and a new token while every call is taken, get a
// clear 503 with Retry-After (never a 500, never a queue); a token verified
// before is still served without a call; and another handler (another
// site, or the other introspecting provider handler of another site) calls
// the same provider for its own users on its own bounds.
func TestIntrospectionFloodBoundedPerHandler(t *testing.T) {
	op, err := testop.Start(testop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Close() })
	var junkInFlight, junkMax, junkCalls, goodCalls atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		tok := r.PostForm.Get("token")
		answer := map[string]any{"active": false}
		if strings.HasPrefix(tok, "junk-") {
			junkCalls.Add(1)
			n := junkInFlight.Add(1)
			defer junkInFlight.Add(-1)
			for m := junkMax.Load(); n > m && !junkMax.CompareAndSwap(m, n); m = junkMax.Load() {
			}
			select { // the flood hangs at the provider
			case <-release:
			case <-r.Context().Done():
			}
		} else {
			goodCalls.Add(1)
			answer = map[string]any{"active": true, "sub": "u-" + tok, "client_id": testop.WebClientID, "iss": op.Issuer,
				"exp": time.Now().Add(time.Hour).Unix()}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(answer)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})
	handler := func() *OIDC {
		o := &OIDC{Provider: Provider{Issuer: op.Issuer, ClientID: testop.WebClientID, ClientSecret: testop.WebClientSecret,
			Introspection: true, IntrospectionEndpoint: srv.URL}, CookieSecret: strings.Repeat("s", 32)}
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		if err := o.provision(ctx, zap.NewNop(), &certmagic.FileStorage{Path: t.TempDir()}); err != nil {
			t.Fatal(err)
		}
		return o
	}
	a, b := handler(), handler()
	serve := func(o *OIDC, tok string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "http://site.example/api", nil)
		r.Header.Set("Authorization", "Bearer "+tok)
		w := httptest.NewRecorder()
		if err := o.ServeHTTP(w, r, nop); err != nil {
			t.Error(err)
		}
		return w
	}
	if w := serve(a, "good-before"); w.Code != 200 {
		t.Fatalf("token before the flood: %d", w.Code)
	}

	const flood = 200
	statuses := make(chan int, flood)
	var wg sync.WaitGroup
	for i := range flood {
		wg.Go(func() { statuses <- serve(a, "junk-"+itoa(int64(i))).Code })
	}
	for deadline := time.Now().Add(10 * time.Second); junkInFlight.Load() < maxRemoteCalls; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d junk calls reached the provider", junkInFlight.Load())
		}
	}

	before := goodCalls.Load()
	if w := serve(a, "good-before"); w.Code != 200 || goodCalls.Load() != before {
		t.Fatalf("token verified before, during the flood: %d, %d calls", w.Code, goodCalls.Load()-before)
	}
	if w := serve(a, "good-new"); w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") == "" {
		t.Fatalf("new token at the flooded handler: %d Retry-After %q, want 503 with Retry-After", w.Code, w.Header().Get("Retry-After"))
	}
	if w := serve(b, "good-other-site"); w.Code != 200 {
		t.Fatalf("new token at another handler during the flood: %d (its calls are not its own)", w.Code)
	}
	if n := junkMax.Load(); n > maxRemoteCalls {
		t.Fatalf("%d flood calls at the provider at once, bound %d", n, maxRemoteCalls)
	}

	close(release)
	wg.Wait()
	close(statuses)
	got := map[int]int{}
	for s := range statuses {
		got[s]++
	}
	if got[401]+got[503] != flood || got[503] == 0 {
		t.Fatalf("flood answers %v: want 401 for the tokens the provider answered, 503 for the rest", got)
	}
	if n, m := junkCalls.Load(), junkMax.Load(); n != int64(got[401]) || m > maxRemoteCalls {
		t.Fatalf("%d provider calls for %d flood requests (%d answered), %d at once: want one per answered token, at most %d at once",
			n, flood, got[401], m, maxRemoteCalls)
	}
	if w := serve(a, "good-new"); w.Code != 200 {
		t.Fatalf("new token after the flood: %d", w.Code)
	}
}

// TestTokeninfoIdentityClaims: a tokeninfo answer is an identity only with
// a non-empty string sub, this client as aud or azp, and an exp in the
// future (as introspection answers; tokeninfo has no client_id fallback).
func TestTokeninfoIdentityClaims(t *testing.T) {
	exp := itoa(time.Now().Add(time.Hour).Unix())
	for _, tt := range []struct {
		name   string
		answer map[string]any
		ok     bool
	}{
		{"good", map[string]any{"aud": "client-1", "sub": "123", "exp": exp}, true},
		{"azp is this client", map[string]any{"aud": "other", "azp": "client-1", "sub": "123", "exp": exp}, true},
		{"empty sub", map[string]any{"aud": "client-1", "sub": "", "exp": exp}, false},
		{"numeric sub", map[string]any{"aud": "client-1", "sub": 123, "exp": exp}, false},
		{"no sub", map[string]any{"aud": "client-1", "exp": exp}, false},
		{"other client", map[string]any{"aud": "other", "azp": "other", "sub": "123", "exp": exp}, false},
		{"exp past", map[string]any{"aud": "client-1", "sub": "123", "exp": itoa(time.Now().Add(-time.Minute).Unix())}, false},
		{"no exp", map[string]any{"aud": "client-1", "sub": "123"}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_ = json.NewEncoder(w).Encode(tt.answer)
			}))
			defer srv.Close()
			o := testOIDC(t)
			o.TokeninfoEndpoint = srv.URL
			o.rt.introspected = expiry.New[[32]byte, *identity](16)
			o.rt.remote = newRemoteChecks(16, 2)
			p := idp.New(idp.Config{}, idp.Metadata{Issuer: "https://accounts.google.com"})
			id, err := o.verifyBearer(context.Background(), p, "ya29.token")
			if (err == nil) != tt.ok {
				t.Fatalf("accepted %v (err %v), want %v", err == nil, err, tt.ok)
			}
			if tt.ok && (id.Subject != "123" || id.Issuer != "https://accounts.google.com") {
				t.Fatalf("identity sub %q iss %q", id.Subject, id.Issuer)
			}
		})
	}
}
