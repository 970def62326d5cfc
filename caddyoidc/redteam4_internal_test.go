package caddyoidc

// Red team 4: attacks on the reshaped sessions layer (sessions.go and its
// two backends, refresh.go) across instances sharing storage, written as
// the attack they prevent. Handlers are provisioned in-process as separate
// "instances" on one file storage, against a real provider (testop, which
// rotates refresh tokens: a spent one is refused), and served through
// ServeHTTP. Each test says whether it is a DEFENCE (passes: the attack is
// refused) or a FINDING (failed when written: the attack works).

import (
	"context"
	"errors"
	"golang.org/x/oauth2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/idp"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// r4Storage is file storage whose writes of keys containing failOn fail
// while fail is set (a storage outage seen by one instance), and which
// records the keys written.
type r4Storage struct {
	*certmagic.FileStorage
	failOn string
	fail   atomic.Bool
	mu     sync.Mutex
	keys   []string // written
	locks  atomic.Int64
}

// Lock counts the storage locks taken.
func (s *r4Storage) Lock(ctx context.Context, name string) error {
	s.locks.Add(1)
	return s.FileStorage.Lock(ctx, name)
}

func (s *r4Storage) written() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.keys...)
}

func (s *r4Storage) Store(ctx context.Context, k string, v []byte) error {
	s.mu.Lock()
	s.keys = append(s.keys, k)
	s.mu.Unlock()
	if s.fail.Load() && strings.Contains(k, s.failOn) {
		return errors.New("injected storage failure")
	}
	return s.FileStorage.Store(ctx, k, v)
}

// r4Env is a provider and a storage folder shared by the instances.
type r4Env struct {
	op  *testop.OP
	dir string
}

func newR4Env(t *testing.T) *r4Env {
	t.Helper()
	op, err := testop.Start(testop.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Close() })
	return &r4Env{op: op, dir: t.TempDir()}
}

// instance provisions a handler on the shared storage (through st when
// given). cache is session_cache (-1: read storage every time).
func (e *r4Env) instance(t *testing.T, mode string, cache time.Duration, st *r4Storage, azat bool, mut ...func(*OIDC)) *OIDC {
	t.Helper()
	if st == nil {
		st = &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}}
	}
	o := &OIDC{Provider: Provider{Issuer: e.op.Issuer, ClientID: testop.WebClientID, ClientSecret: testop.WebClientSecret,
		Scopes: []string{"openid", "profile", "email", "offline_access"}},
		CookieSecret: strings.Repeat("s", 32), Session: mode, SessionCache: caddy.Duration(cache)}
	if azat {
		o.AZAT = &azatauth.Config{Issuer: "https://proxy.example"}
	}
	for _, f := range mut {
		f(o)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := o.provision(ctx, zap.NewNop(), st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Cleanup() })
	if o.rt.disc.Get(ctx) == nil {
		t.Fatal("provider not discovered")
	}
	return o
}

// tokens logs the test user in at the provider (code flow) and returns
// the tokens and the ID token's claims.
func (e *r4Env) tokens(t *testing.T) (at, rt, idt string, claims map[string]any) {
	t.Helper()
	ctx := context.Background()
	cfg := e.op.OAuth2Config(testop.WebClientID, testop.WebClientSecret, "http://127.0.0.1:1/cb")
	cb, err := e.op.LoginAndGetCallback(ctx, cfg.AuthCodeURL("state-0123456789abcdef"))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(cb)
	tok, err := cfg.Exchange(ctx, u.Query().Get("code"))
	if err != nil {
		t.Fatal(err)
	}
	idt, _ = tok.Extra("id_token").(string)
	if tok.RefreshToken == "" || idt == "" {
		t.Fatal("login gave no refresh token or no id token")
	}
	return tok.AccessToken, tok.RefreshToken, idt, idp.UnverifiedClaims(idt)
}

// login makes a real login's session on o whose access token is stale
// (the next request refreshes it) and returns it with its cookies.
func (e *r4Env) login(t *testing.T, o *OIDC) (*session, r4Jar) {
	t.Helper()
	at, rt, idt, claims := e.tokens(t)
	sid, _ := claims["sid"].(string)
	if sid == "" {
		sid = "psid-" + seal.RandomString(8) // testop names no provider session: as a provider with back-channel logout would
	}
	now := time.Now()
	s := (&session{ID: seal.RandomString(32), AccessToken: at, TokenType: "Bearer", RefreshToken: rt, IDToken: idt,
		Expiry: now.Add(-time.Minute).Unix(), Created: now.Unix(), CreatedMs: now.UnixMilli(), ProviderSID: sid,
		Identity: newIdentity(claims, o.RolesClaim, nil)}).labelIdentity()
	raw, err := o.rt.sessions.save(context.Background(), s, true)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", "http://site.example/", nil)
	w := httptest.NewRecorder()
	if !writeChunked(w, r, o.cookieOpts(r), raw, 3600) {
		t.Fatal("session too large for cookies")
	}
	j := r4Jar{}
	j.update(w)
	return s, j
}

// r4Jar is a browser's cookies for the site.
type r4Jar map[string]string

func (j r4Jar) header() string {
	var parts []string
	for k, v := range j {
		parts = append(parts, k+"="+v)
	}
	sort.Strings(parts)
	return strings.Join(parts, "; ")
}

func (j r4Jar) update(w *httptest.ResponseRecorder) {
	for _, c := range w.Result().Cookies() {
		if c.MaxAge < 0 || c.Value == "" {
			delete(j, c.Name)
		} else {
			j[c.Name] = c.Value
		}
	}
}

func (j r4Jar) clone() r4Jar {
	c := r4Jar{}
	for k, v := range j {
		c[k] = v
	}
	return c
}

// r4Serve sends a request with j's cookies through o; user is the
// identity the upstream saw ("" when not reached or anonymous).
func r4Serve(t *testing.T, o *OIDC, method, target string, j r4Jar, hdr ...string) (*httptest.ResponseRecorder, string) {
	t.Helper()
	w, user, err := r4Do(o, method, target, j, hdr...)
	if err != nil {
		t.Fatal(err)
	}
	return w, user
}

// r4Do is r4Serve for another goroutine than the test's.
func r4Do(o *OIDC, method, target string, j r4Jar, hdr ...string) (w *httptest.ResponseRecorder, user string, err error) {
	r := httptest.NewRequest(method, target, nil)
	if h := j.header(); h != "" {
		r.Header.Set("Cookie", h)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w = httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		user = r.Header.Get(headerUser)
		w.WriteHeader(http.StatusOK)
		return nil
	})
	err = o.ServeHTTP(w, r, next)
	return w, user, err
}

// rawSession is the session cookie value j carries for o.
func rawSession(o *OIDC, j r4Jar) string {
	r := httptest.NewRequest("GET", "http://site.example/", nil)
	r.Header.Set("Cookie", j.header())
	return readChunked(r, o.cookieOpts(r))
}

// clearsSession tells whether a response expires the session cookie.
func clearsSession(o *OIDC, w *httptest.ResponseRecorder) bool {
	for _, c := range w.Result().Cookies() {
		if strings.HasPrefix(c.Name, o.CookieName+"_") && c.MaxAge < 0 {
			return true
		}
	}
	return false
}

func r4Logout(t *testing.T, o *OIDC, j r4Jar) *httptest.ResponseRecorder {
	t.Helper()
	w, _ := r4Serve(t, o, "POST", "http://site.example/auth/logout", j, "Origin", "http://site.example")
	if w.Code != http.StatusSeeOther {
		t.Fatalf("logout: %d %s", w.Code, w.Body.String())
	}
	return w
}

const r4API = "http://site.example/api"

// DEFENCE. TestRedteam4StoreLogoutDuringRefreshOnOtherInstance:
// attack: `session store`, two instances. Instance B is refreshing the
// session at the provider (slow: 1.5 s) when the user logs out on
// instance A; a copy of the cookie is then replayed on both.
// expected: the refresh B was making does not store the session again
// after A deleted it: the copy is refused on A at once, on B (no
// session_cache here) at once, and no record is left in storage.
// Variant: A logs out first while B still holds the session in its
// session_cache; B's next request needs a refresh, which must not bring it
// back.
func TestRedteam4StoreLogoutDuringRefreshOnOtherInstance(t *testing.T) {
	for _, logoutFirst := range []bool{false, true} {
		name := "logout while B refreshes"
		if logoutFirst {
			name = "logout while B caches"
		}
		t.Run(name, func(t *testing.T) {
			e := newR4Env(t)
			a := e.instance(t, "store", 0, nil, false)
			bCache := time.Duration(-1)
			if logoutFirst {
				bCache = time.Minute
			}
			b := e.instance(t, "store", bCache, nil, false)
			s, jar := e.login(t, a)
			if logoutFirst {
				// B reads the session into its cache (its stale token makes B
				// refresh on the next use).
				if got, err := b.rt.sessions.open(context.Background(), rawSession(b, jar)); err != nil || got == nil {
					t.Fatalf("setup: B does not open the session: %v", err)
				}
				r4Logout(t, a, jar.clone())
				w, user := r4Serve(t, b, "GET", r4API, jar.clone())
				if user != "" || w.Code == http.StatusOK {
					t.Fatalf("B served a session logged out on A (it was in B's cache and needed a refresh): %d %q", w.Code, user)
				}
			} else {
				e.op.SetTokenDelay(1500 * time.Millisecond)
				var wg sync.WaitGroup
				var bCode int
				var bUser string
				wg.Add(1)
				var bErr error
				go func() {
					defer wg.Done()
					var w *httptest.ResponseRecorder
					w, bUser, bErr = r4Do(b, "GET", r4API, jar.clone())
					bCode = w.Code
				}()
				time.Sleep(400 * time.Millisecond) // B is at the provider, holding the lock
				r4Logout(t, a, jar.clone())
				wg.Wait()
				e.op.SetTokenDelay(0)
				if bErr != nil {
					t.Fatal(bErr)
				}
				t.Logf("B's in-flight request: %d %q (refresh calls %d)", bCode, bUser, e.op.TokenCalls("refresh_token"))
			}
			if got, err := a.rt.stored.load(context.Background(), s.ID); err != nil || got != nil {
				t.Fatalf("the logged-out session is back in storage: %v %v", got != nil, err)
			}
			for n, o := range map[string]*OIDC{"A": a, "B": b} {
				if w, user := r4Serve(t, o, "GET", r4API, jar.clone()); user != "" || w.Code == http.StatusOK {
					t.Fatalf("%s: a copy of the cookie works after logout: %d %q", n, w.Code, user)
				}
			}
			// The legitimate flow still works: a new login on either instance.
			_, jar2 := e.login(t, b)
			if _, user := r4Serve(t, a, "GET", r4API, jar2); user != testop.UserID {
				t.Fatalf("legitimate: a new login after the logout is not served: %q", user)
			}
		})
	}
}

// DEFENCE (plus a documented limit). TestRedteam4StoreRefreshUnstored:
// attack: storage refuses the refreshed record on instance A (the provider
// rotated the refresh token: the result is the only copy that works).
// expected: the session keeps working on A without spending the old token
// again (no second provider call, no logout); once storage is back, a later
// request stores the result, and another instance then uses it without a
// refresh. Limit: while the result is only in A's memory, instance B holds
// the old record and spends the old (rotated) token: the provider refuses
// it and the session ends; then it must end everywhere, not come back from
// A's memory.
func TestRedteam4StoreRefreshUnstored(t *testing.T) {
	t.Run("same instance", func(t *testing.T) {
		e := newR4Env(t)
		stA := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/sessions/"}
		a := e.instance(t, "store", -1, stA, false)
		b := e.instance(t, "store", -1, nil, false)
		s, jar := e.login(t, a)
		stA.fail.Store(true)
		for i := range 3 {
			w, user := r4Serve(t, a, "GET", r4API, jar.clone())
			if user != testop.UserID || clearsSession(a, w) {
				t.Fatalf("request %d while storage fails: %d %q (cleared %v)", i, w.Code, user, clearsSession(a, w))
			}
		}
		if n := e.op.TokenCalls("refresh_token"); n != 1 {
			t.Fatalf("%d provider refreshes while the result could not be stored, want 1", n)
		}
		if cur, _ := b.rt.stored.load(context.Background(), s.ID); cur == nil || cur.RefreshToken != s.RefreshToken {
			t.Fatal("setup: the record changed although storage failed")
		}
		stA.fail.Store(false)
		if _, user := r4Serve(t, a, "GET", r4API, jar.clone()); user != testop.UserID {
			t.Fatalf("after storage is back: %q", user)
		}
		cur, _ := b.rt.stored.load(context.Background(), s.ID)
		if cur == nil || cur.RefreshToken == s.RefreshToken || !cur.usable(time.Now()) {
			t.Fatal("the result kept in memory was not stored by the later request")
		}
		if _, user := r4Serve(t, b, "GET", r4API, jar.clone()); user != testop.UserID || e.op.TokenCalls("refresh_token") != 1 {
			t.Fatalf("other instance after the store: %q, %d refreshes", user, e.op.TokenCalls("refresh_token"))
		}
	})
	t.Run("other instance meanwhile", func(t *testing.T) {
		e := newR4Env(t)
		stA := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/sessions/"}
		a := e.instance(t, "store", -1, stA, false)
		b := e.instance(t, "store", -1, nil, false)
		s, jar := e.login(t, a)
		stA.fail.Store(true)
		if _, user := r4Serve(t, a, "GET", r4API, jar.clone()); user != testop.UserID {
			t.Fatalf("A while storage fails: %q", user)
		}
		w, user := r4Serve(t, b, "GET", r4API, jar.clone())
		t.Logf("B with the old record while A holds the rotated token in memory: %d %q cleared=%v", w.Code, user, clearsSession(b, w))
		stA.fail.Store(false)
		_, u := r4Serve(t, a, "GET", r4API, jar.clone())
		cur, _ := b.rt.stored.load(context.Background(), s.ID)
		if user == "" {
			// B spent the rotated token and ended the session: it stays ended.
			if u != "" || cur != nil {
				t.Fatalf("a session ended on B came back from A's memory: served %q, stored %v", u, cur != nil)
			}
		} else if u != testop.UserID || cur == nil {
			// B kept it: then it works on both and is stored.
			t.Fatalf("B kept the session but A %q, stored %v", u, cur != nil)
		}
	})
}

// TestRedteam4RefusedRefreshEndsOnce:
// attack: the provider refuses the session's refresh token (revoked by an
// admin); a copy of the cookie is replayed again and again.
// expected: the session ends at the first refusal (cookie cleared, not
// served) and the copies are refused without asking the provider again:
// one provider call, not one per replayed request (an attacker holding a
// dead cookie must not drive the provider's token endpoint).
// DEFENCE in store mode (the record is deleted). FINDING in cookie mode
// when written: nothing records the refusal, so every replay of the dead
// cookie spends a token-endpoint call.
func TestRedteam4RefusedRefreshEndsOnce(t *testing.T) {
	for _, mode := range []string{"store", "cookie"} {
		t.Run(mode, func(t *testing.T) {
			e := newR4Env(t)
			a := e.instance(t, mode, -1, nil, false)
			_, jar := e.login(t, a)
			e.op.RevokeAllRefreshTokens()
			w, user := r4Serve(t, a, "GET", r4API, jar.clone())
			if user != "" || !clearsSession(a, w) {
				t.Fatalf("a refused refresh did not end the session: %d %q cleared=%v", w.Code, user, clearsSession(a, w))
			}
			for range 5 {
				if _, user := r4Serve(t, a, "GET", r4API, jar.clone()); user != "" {
					t.Fatal("a replayed copy of a refused session was served")
				}
			}
			if n := e.op.TokenCalls("refresh_token"); n != 1 {
				t.Fatalf("%d provider refresh calls for one refused session and 5 replays of its cookie, want 1", n)
			}
			// Legitimate: a new login works.
			_, jar2 := e.login(t, a)
			if _, user := r4Serve(t, a, "GET", r4API, jar2); user != testop.UserID {
				t.Fatalf("legitimate: new login: %q", user)
			}
		})
	}
}

// DEFENCE (plus a documented limit). TestRedteam4CookieOldCookieAfterRefresh:
// attack: cookie sessions on two instances. A refreshes (rotating the
// refresh token); the browser's requests still carrying the old cookie go
// to A and to B. Then the user logs out on A; copies of the old and the new
// cookie are replayed on both.
// expected: on A the old cookie reuses the refresh just made (no provider
// call, no logout). On B (no shared memory in cookie mode) the old cookie
// spends the rotated token: it must not be served with a stale token, and
// the new cookie keeps working there (no collateral logout of the live
// token). After the logout, both cookies are refused on A at once and on B
// once it has reloaded revocations (revocation_reload).
func TestRedteam4CookieOldCookieAfterRefresh(t *testing.T) {
	e := newR4Env(t)
	a := e.instance(t, "cookie", -1, nil, false)
	b := e.instance(t, "cookie", -1, nil, false)
	_, old := e.login(t, a)
	w, user := r4Serve(t, a, "GET", r4API, old.clone())
	if user != testop.UserID {
		t.Fatalf("first refresh on A: %d %q", w.Code, user)
	}
	cur := old.clone()
	cur.update(w)
	if cur.header() == old.header() {
		t.Fatal("the refresh wrote no new cookie")
	}
	w, user = r4Serve(t, a, "GET", r4API, old.clone())
	if user != testop.UserID || clearsSession(a, w) || e.op.TokenCalls("refresh_token") != 1 {
		t.Fatalf("old cookie on A after the refresh: %q cleared=%v, %d refreshes", user, clearsSession(a, w), e.op.TokenCalls("refresh_token"))
	}
	w, user = r4Serve(t, b, "GET", r4API, old.clone())
	t.Logf("old cookie on B (no shared refresh memory in cookie mode): %d %q cleared=%v, %d refreshes",
		w.Code, user, clearsSession(b, w), e.op.TokenCalls("refresh_token"))
	if user != "" && e.op.TokenCalls("refresh_token") == 1 {
		t.Fatal("B served the old cookie without a refresh (stale token sent upstream?)")
	}
	if _, user := r4Serve(t, b, "GET", r4API, cur.clone()); user != testop.UserID {
		t.Fatalf("the new cookie stopped working on B after B met the old one: %q", user)
	}
	r4Logout(t, a, cur.clone())
	if err := b.loadRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	for n, o := range map[string]*OIDC{"A": a, "B": b} {
		for which, j := range map[string]r4Jar{"old": old, "new": cur} {
			if _, user := r4Serve(t, o, "GET", r4API, j.clone()); user != "" {
				t.Fatalf("%s: a copy of the %s cookie works after logout", n, which)
			}
		}
	}
}

// TestRedteam4StoreSidLearntAtRefresh:
// attack: a session whose provider session id (sid) is learnt or changes
// at a refresh (the refreshed ID token carries it: refreshAtIdP sets
// ProviderSID). The provider then sends a back-channel logout for that sid.
// expected: the session ends, in both modes.
// DEFENCE in cookie mode (the revocation is checked against the session's
// current sid). FINDING in store mode when written: the sid index is
// written only when the session is created (storedSessions.save with
// created), so endIndexed does not find the session under its new sid, and
// stored sessions are not checked against revocations: it lives on.
func TestRedteam4StoreSidLearntAtRefresh(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		for _, oldSID := range []string{"", "sid-1"} {
			t.Run(mode+"/from "+oldSID, func(t *testing.T) {
				ctx := context.Background()
				o := sessionsHandler(t, mode, t.TempDir())
				s := testSession(o.Issuer)
				s.ProviderSID = oldSID
				s.labelIdentity()
				if _, err := o.rt.sessions.save(ctx, s, true); err != nil {
					t.Fatal(err)
				}
				ns, _, err := o.rt.sessions.refresh(ctx, s, func(_ context.Context, cur *session) (*session, error) {
					n := *cur
					n.AccessToken, n.RefreshToken, n.ProviderSID = "at-2", "rt-2", "sid-2"
					return n.labelIdentity(), nil
				})
				if err != nil {
					t.Fatal(err)
				}
				raw, err := o.rt.sessions.save(ctx, ns, false)
				if err != nil {
					t.Fatal(err)
				}
				if got, _ := o.rt.sessions.open(ctx, raw); got == nil {
					t.Fatal("legitimate: the refreshed session does not open")
				}
				// What serveBackchannelLogout does for a logout token with sid-2.
				for _, idx := range indexesFor(o.Issuer, "sid-2", "alice") {
					if _, err := o.rt.stored.endIndexed(ctx, idx); err != nil {
						t.Fatal(err)
					}
				}
				now := time.Now()
				if err := o.storeRevocation(ctx, revocation{Kind: "sid", Key: hashKey(o.Issuer, "sid-2"), At: now.Unix(),
					AtMs: now.UnixMilli(), Until: now.Add(time.Hour).Unix()}); err != nil {
					t.Fatal(err)
				}
				if got, _ := o.rt.sessions.open(ctx, raw); got != nil {
					t.Fatalf("a back-channel logout of the session's current sid (learnt at refresh) did not end it")
				}
			})
		}
	}
}

// DEFENCE. TestRedteam4AZATPendingGrantAfterLogout:
// attack: instance A refreshes a user's grant but storage refuses it (the
// rotated refresh token lives only in A's memory); the user then logs out
// on instance B (azat logout not kept: the grant is forgotten, its AZATs
// revoked). The AZAT is replayed on A, while storage still fails and after.
// expected: A serves the AZAT while storage fails and the grant is live
// (no second provider call); after the logout on B the AZAT is refused on
// A, and the grant kept in A's memory does not bring the grant back.
func TestRedteam4AZATPendingGrantAfterLogout(t *testing.T) {
	e := newR4Env(t)
	ctx := context.Background()
	stA := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/azat/grants/"}
	a := e.instance(t, "cookie", -1, stA, true)
	b := e.instance(t, "cookie", -1, nil, true)
	at, rt, idt, claims := e.tokens(t)
	key := e.op.Issuer + "#" + testop.UserID
	if err := a.azat.Grants().Put(ctx, &azatauth.Grant{Key: key, AccessToken: at, TokenType: "Bearer",
		Expiry: time.Now().Add(-time.Minute).Unix(), RefreshToken: rt, IDToken: idt, Claims: claims}); err != nil {
		t.Fatal(err)
	}
	m, err := a.azat.Mint(ctx, key, "https://proxy.example")
	if err != nil {
		t.Fatal(err)
	}
	serve := func(o *OIDC) (int, string) {
		w, user := r4Serve(t, o, "GET", "http://proxy.example/api", nil, "Authorization", "Bearer "+m.Token)
		return w.Code, user
	}
	stA.fail.Store(true)
	for i := range 2 {
		if code, user := serve(a); user != testop.UserID {
			t.Fatalf("AZAT request %d on A while grant storage fails: %d %q", i, code, user)
		}
	}
	if n := e.op.TokenCalls("refresh_token"); n != 1 {
		t.Fatalf("%d provider refreshes for a grant kept in memory, want 1", n)
	}
	// Logout on B of a grant-backed session.
	s := testSession(e.op.Issuer)
	s.Identity.Subject, s.GrantKey, s.RefreshToken = testop.UserID, key, ""
	if err := b.endSession(ctx, b.rt.disc.Get(ctx), s.labelIdentity()); err != nil {
		t.Fatal(err)
	}
	for _, failing := range []bool{true, false} {
		stA.fail.Store(failing)
		if code, user := serve(a); user != "" {
			t.Fatalf("AZAT served on A after logout on B (storage failing %v): %d %q", failing, code, user)
		}
	}
	if g, err := b.azat.Grants().LoadFresh(ctx, key); err != nil || g.Usable() {
		t.Fatalf("the grant came back after logout: usable=%v %v", g.Usable(), err)
	}
	if code, user := serve(b); user != "" {
		t.Fatalf("AZAT served on B after logout: %d %q", code, user)
	}
}

// DEFENCE. TestRedteam4UnauthenticatedGrowth:
// attack: an unauthenticated caller sends forged, foreign and garbage
// session cookies (many chunks, many candidates), logs out, refreshes,
// asks userinfo and posts junk back-channel logout tokens, in both modes.
// expected: nothing is written to storage, and no per-request state stays
// in memory (refresh results, session caches).
func TestRedteam4UnauthenticatedGrowth(t *testing.T) {
	for _, mode := range []string{"store", "cookie"} {
		t.Run(mode, func(t *testing.T) {
			e := newR4Env(t)
			st := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}}
			o := e.instance(t, mode, 0, st, false)
			// A foreign seal: another namespace's valid session-id and session
			// values (same cookie_secret, other client).
			other := &OIDC{Provider: Provider{Issuer: e.op.Issuer, ClientID: testop.OtherClientID, ClientSecret: testop.OtherClientSecret},
				CookieSecret: strings.Repeat("s", 32), Session: mode}
			if err := other.provision(context.Background(), zap.NewNop(), &certmagic.FileStorage{Path: t.TempDir()}); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = other.Cleanup() })
			_, foreign := e.login(t, other)
			before := len(st.written())
			name := func(i int) string { return chunkName(o.CookieName, i) }
			for i := range 200 {
				jars := []r4Jar{
					foreign,
					{name(0): seal.RandomString(40)},
					// A genuine sealed id of a session that is gone (what a
					// logged-out store-mode cookie carries).
					{name(0): o.rt.sealer.Seal([]byte(seal.RandomString(32)), "session-id")},
				}
				for _, j := range jars {
					for _, path := range []string{"/api", "/auth/userinfo"} {
						if _, user := r4Serve(t, o, "GET", "http://site.example"+path, j); user != "" {
							t.Fatalf("a forged cookie was served as %q", user)
						}
					}
					r4Serve(t, o, "POST", "http://site.example/auth/logout", j, "Origin", "http://site.example")
					r4Serve(t, o, "POST", "http://site.example/auth/refresh", j, "Origin", "http://site.example")
				}
				r := httptest.NewRequest("POST", "http://site.example/auth/backchannel-logout",
					strings.NewReader("logout_token="+seal.RandomString(20)+"."+itoa(int64(i))+".x"))
				r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
				_ = o.ServeHTTP(httptest.NewRecorder(), r, nop)
			}
			if keys := st.written()[before:]; len(keys) != 0 {
				t.Fatalf("unauthenticated requests wrote %d storage records: %q", len(keys), keys[:min(len(keys), 5)])
			}
			o.rt.recent.mu.Lock()
			recent := len(o.rt.recent.m)
			o.rt.recent.mu.Unlock()
			if recent != 0 || o.rt.stored.cache.Len() != 0 {
				t.Fatalf("unauthenticated requests left state in memory: %d refresh results, %d cached stored sessions", recent, o.rt.stored.cache.Len())
			}
			if cs, ok := o.rt.sessions.(*cookieSessions); ok && cs.cache.Len() != 0 {
				t.Fatalf("unauthenticated requests left %d decoded cookie sessions in memory", cs.cache.Len())
			}
			// Legitimate: a real login is served (and, in store mode, is
			// seen writing: the recorder works).
			mark := len(st.written())
			_, jar := e.login(t, o)
			if _, user := r4Serve(t, o, "GET", r4API, jar); user != testop.UserID {
				t.Fatalf("legitimate login: %q", user)
			}
			if mode == "store" && len(st.written()) == mark {
				t.Fatal("setup: a stored login wrote nothing the recorder saw")
			}
		})
	}
}

// TestRedteam4RefreshStormTwoInstances:
// attack: 20 concurrent requests on each of two instances sharing storage,
// all carrying the same session whose access token is stale, against a
// slow provider that rotates refresh tokens.
// expected (store): one provider refresh in all (singleflight in each
// instance, the record's storage lock and re-read across them), every
// request served, and none kept waiting long after the provider answered.
// FINDING when written (the latency): every request then saves the
// shared result again (saveSession -> storedSessions.update, which takes
// the record's storage lock): 40 lock round trips, the slowest request
// ~13 s for a 300 ms provider.
// cookie mode cannot share a refresh across instances (nothing is
// stored): each instance makes at most one call; the instance that loses
// the race spends a rotated token and its requests are not served (the
// session ends in that browser tab's responses). What must hold: at most
// one call per instance, no request served with a stale token, and the
// winner's requests all served. A documented limit, not a defence.
func TestRedteam4RefreshStormTwoInstances(t *testing.T) {
	for _, mode := range []string{"store", "cookie"} {
		t.Run(mode, func(t *testing.T) {
			e := newR4Env(t)
			sts := []*r4Storage{{FileStorage: &certmagic.FileStorage{Path: e.dir}}, {FileStorage: &certmagic.FileStorage{Path: e.dir}}}
			insts := []*OIDC{e.instance(t, mode, -1, sts[0], false), e.instance(t, mode, -1, sts[1], false)}
			_, jar := e.login(t, insts[0])
			locks := sts[0].locks.Load() + sts[1].locks.Load()
			e.op.SetTokenDelay(300 * time.Millisecond)
			defer e.op.SetTokenDelay(0)
			const n = 20
			var wg sync.WaitGroup
			served := make([]atomic.Int32, len(insts))
			errs := make(chan error, 2*n)
			var latMu sync.Mutex
			var slowest time.Duration
			for i, o := range insts {
				for range n {
					wg.Add(1)
					go func() {
						defer wg.Done()
						start := time.Now()
						_, user, err := r4Do(o, "GET", r4API, jar.clone())
						d := time.Since(start)
						latMu.Lock()
						slowest = max(slowest, d)
						latMu.Unlock()
						if err != nil {
							errs <- err
						}
						if user == testop.UserID {
							served[i].Add(1)
						}
					}()
				}
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			calls := e.op.TokenCalls("refresh_token")
			locks = sts[0].locks.Load() + sts[1].locks.Load() - locks
			t.Logf("%s: %d provider refreshes, %d storage locks; served on A %d/%d, on B %d/%d; slowest request %v",
				mode, calls, locks, served[0].Load(), n, served[1].Load(), n, slowest)
			switch mode {
			case "store":
				if calls != 1 || served[0].Load() != n || served[1].Load() != n {
					t.Fatalf("store storm: %d refreshes (want 1), served %d and %d of %d", calls, served[0].Load(), served[1].Load(), n)
				}
				// One refresh per instance under the record's lock; not one
				// lock (and record write) per request, which queues the storm
				// on the storage lock (file storage polls it every second).
				if slowest > 300*time.Millisecond+3*time.Second {
					t.Fatalf("store storm: the slowest request took %v for a 300ms provider (%d storage locks for %d requests)", slowest, locks, 2*n)
				}
			case "cookie":
				if calls > 2 {
					t.Fatalf("cookie storm: %d provider refreshes for two instances, want at most one each", calls)
				}
				if served[0].Load() != n && served[1].Load() != n {
					t.Fatalf("cookie storm: no instance served all its requests: %d and %d of %d", served[0].Load(), served[1].Load(), n)
				}
			}
		})
	}
}

// TestRedteam4StoreSweepBetweenIndexAndRecord:
// attack: a login on one instance writes the new session's index entries,
// then its record (storedSessions.save: index first, "a stored session a
// back-channel logout cannot find is never created"); another instance's
// sweep runs between the two writes. The provider then sends a
// back-channel logout for the user.
// expected: the session ends (the sweep spares an index entry whose
// session may still be being written).
// FINDING when written: sweepIndex deletes every entry whose record does
// not exist at that moment, so the entry of a login in flight goes, the
// record is written after it, and the back-channel logout finds nothing:
// the session lives on until it expires.
func TestRedteam4StoreSweepBetweenIndexAndRecord(t *testing.T) {
	for _, between := range []bool{false, true} {
		t.Run(map[bool]string{false: "control: no sweep in between", true: "sweep in between"}[between], func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			a, b := sessionsHandler(t, "store", dir), sessionsHandler(t, "store", dir)
			s := testSession(a.Issuer)
			s.ProviderSID = "psid-1"
			s.labelIdentity()
			// storedSessions.save(created) on a, with b's sweep in between.
			if err := a.rt.stored.index(ctx, s); err != nil {
				t.Fatal(err)
			}
			if between {
				b.sweep(ctx, time.Now())
			}
			if err := a.rt.stored.store(ctx, s); err != nil {
				t.Fatal(err)
			}
			raw := a.rt.sealer.Seal([]byte(s.ID), a.rt.sessions.purpose())
			if got, _ := a.rt.sessions.open(ctx, raw); got == nil {
				t.Fatal("legitimate: the new session does not open")
			}
			// A sweep once the record exists keeps the entries.
			b.sweep(ctx, time.Now())
			for _, idx := range indexesFor(a.Issuer, "", "alice") {
				if _, err := b.rt.stored.endIndexed(ctx, idx); err != nil {
					t.Fatal(err)
				}
			}
			if got, _ := a.rt.sessions.open(ctx, raw); got != nil {
				t.Fatal("a back-channel logout of the user missed a session whose index entry a concurrent sweep deleted")
			}
		})
	}
}

// TestRedteam4AZATPendingGrantOverNewLogin:
// attack: instance A refreshes a user's grant but storage refuses it (A
// keeps it in memory: unstored). The user logs out on instance B (the
// grant is forgotten) and logs in again there (a new grant: new refresh
// token, new claims, e.g. a group removed meanwhile). When the new grant's
// access token goes stale, a request reaches A.
// expected: the new login's grant stays (A's memory is of a grant that has
// ended since; a record rewritten since the refresh is not A's to
// overwrite).
// FINDING when written: refreshGrant drops the pending grant only when the
// stored one is not usable (a tombstone); over the new login's usable
// grant, the pending one "wins over storage": A writes back the logged-out
// login's refresh token and claims over the new login.
func TestRedteam4AZATPendingGrantOverNewLogin(t *testing.T) {
	e := newR4Env(t)
	ctx := context.Background()
	noCache := func(o *OIDC) { o.AZAT.GrantCache = caddy.Duration(-1) }
	stA := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/azat/grants/"}
	a := e.instance(t, "cookie", -1, stA, true, noCache)
	b := e.instance(t, "cookie", -1, nil, true, noCache)
	key := e.op.Issuer + "#" + testop.UserID
	grant := func(o *OIDC, login string) string {
		at, rt, idt, claims := e.tokens(t)
		claims["login"] = login
		if err := o.azat.Grants().Put(ctx, &azatauth.Grant{Key: key, AccessToken: at, TokenType: "Bearer",
			Expiry: time.Now().Add(-time.Minute).Unix(), RefreshToken: rt, IDToken: idt, Claims: claims}); err != nil {
			t.Fatal(err)
		}
		m, err := o.azat.Mint(ctx, key, "https://proxy.example")
		if err != nil {
			t.Fatal(err)
		}
		return m.Token
	}
	serve := func(o *OIDC, tok string) (int, string) {
		w, user := r4Serve(t, o, "GET", "http://proxy.example/api", nil, "Authorization", "Bearer "+tok)
		return w.Code, user
	}
	first := grant(a, "first")
	stA.fail.Store(true)
	if code, user := serve(a, first); user != testop.UserID {
		t.Fatalf("A while grant storage fails: %d %q", code, user)
	}
	stA.fail.Store(false)
	// Logout and a new login on B.
	s := testSession(e.op.Issuer)
	s.Identity.Subject, s.GrantKey, s.RefreshToken = testop.UserID, key, ""
	if err := b.endSession(ctx, b.rt.disc.Get(ctx), s.labelIdentity()); err != nil {
		t.Fatal(err)
	}
	second := grant(b, "second")
	if code, user := serve(a, first); user != "" {
		t.Fatalf("the AZAT of the logged-out login works on A: %d %q", code, user)
	}
	if code, user := serve(a, second); user != testop.UserID {
		t.Fatalf("legitimate: the new login's AZAT on A: %d %q", code, user)
	}
	g, err := b.azat.Grants().LoadFresh(ctx, key)
	if err != nil || !g.Usable() {
		t.Fatalf("the new login's grant is gone: %v", err)
	}
	if g.Claims["login"] != "second" {
		t.Fatalf("A wrote the logged-out login's grant (claims of login %v) over the new login's", g.Claims["login"])
	}
}

// r4BackchannelLogout posts a logout token signed by the provider to o,
// naming sid (when not empty) or the test user.
func (e *r4Env) backchannelLogout(t *testing.T, o *OIDC, sid string) {
	t.Helper()
	now := time.Now()
	c := map[string]any{"iss": e.op.Issuer, "aud": testop.WebClientID, "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(),
		"jti": seal.RandomString(16), "sub": testop.UserID,
		"events": map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}}
	if sid != "" {
		c["sid"] = sid
		delete(c, "sub")
	}
	tok, err := e.op.SignJWT(c, map[string]any{"typ": "logout+jwt"})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("POST", "http://site.example/auth/backchannel-logout", strings.NewReader(url.Values{"logout_token": {tok}}.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	if err := o.ServeHTTP(w, r, nop); err != nil || w.Code != http.StatusOK {
		t.Fatalf("back-channel logout: %d %s %v", w.Code, w.Body.String(), err)
	}
}

// DEFENCE. TestRedteam4BackchannelAfterRefreshOtherInstance:
// attack: a session is refreshed on instance A (a new cookie, the same
// session); the provider's back-channel logout (by sid, by sub) reaches
// instance B. Copies of the old and the new cookie are replayed on A.
// expected: both are refused on A (cookie mode: once A reloaded the
// revocations; store mode: at once, no session_cache here); a login made
// after the logout works (a sub logout ends only earlier logins).
func TestRedteam4BackchannelAfterRefreshOtherInstance(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		for _, bySID := range []bool{true, false} {
			t.Run(mode+map[bool]string{true: "/sid", false: "/sub"}[bySID], func(t *testing.T) {
				e := newR4Env(t)
				a := e.instance(t, mode, -1, nil, false)
				b := e.instance(t, mode, -1, nil, false)
				s, old := e.login(t, a)
				w, user := r4Serve(t, a, "GET", r4API, old.clone())
				if user != testop.UserID {
					t.Fatalf("refresh on A: %d %q", w.Code, user)
				}
				cur := old.clone()
				cur.update(w)
				sid := ""
				if bySID {
					sid = s.ProviderSID
				}
				e.backchannelLogout(t, b, sid)
				if err := a.loadRevocations(context.Background()); err != nil {
					t.Fatal(err)
				}
				for which, j := range map[string]r4Jar{"old": old, "new": cur} {
					if _, user := r4Serve(t, a, "GET", r4API, j.clone()); user != "" {
						t.Fatalf("the %s cookie works on A after a back-channel logout on B", which)
					}
				}
				time.Sleep(2 * time.Millisecond) // a login after the logout, not in its millisecond
				_, fresh := e.login(t, a)
				if _, user := r4Serve(t, a, "GET", r4API, fresh); user != testop.UserID {
					t.Fatalf("legitimate: a login after the back-channel logout: %q", user)
				}
			})
		}
	}
}

// TestRedteam4StoreKeptRefreshExpires (found in review):
// attack (fault): a refresh on A cannot be stored (the provider rotated the
// refresh token: the result kept in memory holds the only live one); its
// access token then expires while it is still only in memory, and storage
// comes back.
// expected: the next request refreshes again with the refresh token the
// kept result holds (not the spent one in storage), the session stays, and
// the new record is stored. FINDING when written: the kept result was used
// with its expired access token, stored, and then cleared as unusable:
// the user was logged out, and later the spent token was sent again.
func TestRedteam4StoreKeptRefreshExpires(t *testing.T) {
	e := newR4Env(t)
	stA := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/sessions/"}
	a := e.instance(t, "store", -1, stA, false)
	s, jar := e.login(t, a)
	stA.fail.Store(true)
	if _, user := r4Serve(t, a, "GET", r4API, jar.clone()); user != testop.UserID {
		t.Fatalf("while storage fails: %q", user)
	}
	kept, ok := a.rt.recent.get(refreshKey(s))
	if !ok || kept.RefreshToken == s.RefreshToken {
		t.Fatal("setup: no refreshed session kept in memory")
	}
	live := kept.RefreshToken
	kept.Expiry = time.Now().Add(-time.Second).Unix() // its access token has expired since
	stA.fail.Store(false)
	w, user := r4Serve(t, a, "GET", r4API, jar.clone())
	if user != testop.UserID || clearsSession(a, w) {
		t.Fatalf("after the kept access token expired: %d %q (cleared %v)", w.Code, user, clearsSession(a, w))
	}
	if n := e.op.TokenCalls("refresh_token"); n != 2 {
		t.Fatalf("%d provider refreshes, want 2 (the second with the kept refresh token)", n)
	}
	cur, _ := a.rt.stored.load(context.Background(), s.ID)
	if cur == nil || cur.RefreshToken == s.RefreshToken || cur.RefreshToken == live || !cur.usable(time.Now()) {
		t.Fatalf("the record is not the new refresh's: %+v", cur)
	}
}

// TestRedteam4GrantSessionWithoutAZAT (found in review): a session whose
// refresh token lives in the AZAT grant store, met by a handler without
// `azat` (the operator removed it), with a stale access token.
// expected: log in again (the session is cleared), not 503 "retry
// shortly" until session_lifetime; a fresh session still works.
func TestRedteam4GrantSessionWithoutAZAT(t *testing.T) {
	e := newR4Env(t)
	o := e.instance(t, "cookie", 0, nil, false)
	s, jar := e.login(t, o)
	gs := *s
	gs.GrantKey, gs.RefreshToken = grantKey(s.Identity), ""
	gs.labelIdentity()
	raw, err := o.rt.sessions.save(context.Background(), &gs, true)
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest("GET", r4API, nil)
	rec := httptest.NewRecorder()
	writeChunked(rec, r, o.cookieOpts(r), raw, 3600)
	grantJar := r4Jar{}
	grantJar.update(rec)
	w, user := r4Serve(t, o, "GET", r4API, grantJar)
	if w.Code == http.StatusServiceUnavailable || user != "" || !clearsSession(o, w) {
		t.Fatalf("grant session without azat: %d %q (cleared %v), want a cleared session", w.Code, user, clearsSession(o, w))
	}
	if _, user := r4Serve(t, o, "GET", r4API, jar.clone()); user != testop.UserID {
		t.Fatalf("a refreshable session: %q", user)
	}
}

// TestRedteam4StoreLogoutRevokesLatestRefreshToken (found in review):
// `session store`, two instances. B refreshes the session (the provider
// rotates the refresh token), then the user logs out on A, which still
// holds the session as it read it before (session_cache).
// expected: after the logout, no refresh token of the session works at
// the provider (the one revoked is the record's, from B's refresh, not the
// spent one A's copy holds: TestStoredEndReturnsLastVersion; testop also
// ends the rotated token's family when the spent one is revoked).
func TestRedteam4StoreLogoutRevokesLatestRefreshToken(t *testing.T) {
	e := newR4Env(t)
	a := e.instance(t, "store", time.Minute, nil, false)
	b := e.instance(t, "store", -1, nil, false)
	s, jar := e.login(t, a)
	if _, user := r4Serve(t, a, "GET", "http://site.example/auth/userinfo", jar.clone()); user != "" {
		t.Log("userinfo served") // reads the session into A's session_cache
	}
	if _, user := r4Serve(t, b, "GET", r4API, jar.clone()); user != testop.UserID {
		t.Fatalf("refresh on B: %q", user)
	}
	cur, _ := b.rt.stored.load(context.Background(), s.ID)
	if cur == nil || cur.RefreshToken == s.RefreshToken {
		t.Fatal("setup: B's refresh did not rotate the stored refresh token")
	}
	live := cur.RefreshToken
	// Control: a refresh token of this client works at the provider the
	// same way (so the check below can fail).
	_, rt2, _, _ := e.tokens(t)
	cfg0 := e.op.OAuth2Config(testop.WebClientID, testop.WebClientSecret, "http://127.0.0.1:1/cb")
	if _, err := cfg0.TokenSource(context.Background(), &oauth2.Token{RefreshToken: rt2}).Token(); err != nil {
		t.Fatalf("control: a live refresh token is refused: %v", err)
	}
	r4Logout(t, a, jar.clone())
	cfg := e.op.OAuth2Config(testop.WebClientID, testop.WebClientSecret, "http://127.0.0.1:1/cb")
	if _, err := cfg.TokenSource(context.Background(), &oauth2.Token{RefreshToken: live}).Token(); err == nil {
		t.Fatal("the session's live refresh token still works at the provider after logout")
	} else {
		t.Logf("live refresh token after logout: %v", err)
	}
}
