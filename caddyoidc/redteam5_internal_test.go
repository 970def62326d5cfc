package caddyoidc

// Red team 5: attacks on the kept-refresh changes of the refresh
// coordinator (refresh.go, session_store.go): a refreshed session storage
// refused is kept in memory (recentResults, unstoredTTL) and refreshed again
// with the refresh token it holds once its access token expired; `spent`
// lets it be written over the record it came from; refused refreshes are
// remembered. Reuses red team 4's harness (r4Env: testop rotates refresh
// tokens, so a spent one is refused). Each test says whether it is a
// DEFENCE (passes: the attack is refused) or a FINDING (fails: it works).

import (
	"context"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// r5Failing is an instance whose writes of session records fail while
// st.fail is set.
func (e *r4Env) r5Failing(t *testing.T, cache time.Duration) (*OIDC, *r4Storage) {
	t.Helper()
	st := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/sessions/"}
	return e.instance(t, "store", cache, st, false), st
}

// r5Kept returns the refreshed session o keeps in memory for key, failing
// the test when there is none.
func r5Kept(t *testing.T, o *OIDC, key, what string) *session {
	t.Helper()
	ns, ok := o.rt.recent.get(key)
	if !ok {
		t.Fatalf("setup: no %s kept in memory", what)
	}
	return ns
}

// r5Expire makes a kept session's access token expired (tests are
// sequential here: no request reads it meanwhile).
func r5Expire(s *session) { s.Expiry = time.Now().Add(-time.Second).Unix() }

// r5Works asserts that j's session is served by o and not cleared.
func r5Works(t *testing.T, o *OIDC, j r4Jar, what string) {
	t.Helper()
	w, user := r4Serve(t, o, "GET", r4API, j.clone())
	if user != testop.UserID || clearsSession(o, w) {
		t.Fatalf("%s: %d %q (cleared %v), want the session served", what, w.Code, user, clearsSession(o, w))
	}
}

// FINDING. TestRedteam5StoreKeptTwiceThenStored:
// attack (fault): storage refuses A's writes of session records for longer
// than an access token lifetime: the refresh kept in memory (K1, made from
// the record's rt0) expires and is refreshed again (K2, from K1's rt1),
// which storage refuses too. Then storage comes back.
// expected: the next request stores K2 (the only live refresh token) over
// the record that still holds rt0, and the session keeps working.
func TestRedteam5StoreKeptTwiceThenStored(t *testing.T) {
	e := newR4Env(t)
	a, st := e.r5Failing(t, -1)
	s, jar := e.login(t, a)
	st.fail.Store(true)
	r5Works(t, a, jar, "first refresh while storage fails")
	k1 := r5Kept(t, a, refreshKey(s), "first refresh")
	r5Expire(k1)
	r5Works(t, a, jar, "second refresh while storage fails")
	k2 := r5Kept(t, a, refreshKey(k1), "second refresh")
	if n := e.op.TokenCalls("refresh_token"); n != 2 {
		t.Fatalf("setup: %d provider refreshes, want 2", n)
	}
	st.fail.Store(false)
	r5Works(t, a, jar, "after storage is back")
	cur, _ := a.rt.stored.load(context.Background(), s.ID)
	if cur == nil || cur.RefreshToken == s.RefreshToken || cur.RefreshToken == k1.RefreshToken {
		t.Fatalf("the live refresh token (K2's) was never stored: the record still holds a spent one (record rt == rt0: %v, == K1's: %v, == K2's: %v)",
			cur != nil && cur.RefreshToken == s.RefreshToken, cur != nil && cur.RefreshToken == k1.RefreshToken,
			cur != nil && cur.RefreshToken == k2.RefreshToken)
	}
}

// FINDING. TestRedteam5StoreKeptTwiceExpires:
// attack (fault): as above, but storage stays down for longer than two
// access token lifetimes: K2 expires too while only in memory.
// expected: the next request refreshes with K2's refresh token (the live
// one) and the session stays; the provider is not sent a spent token.
func TestRedteam5StoreKeptTwiceExpires(t *testing.T) {
	e := newR4Env(t)
	a, st := e.r5Failing(t, -1)
	s, jar := e.login(t, a)
	st.fail.Store(true)
	r5Works(t, a, jar, "first refresh while storage fails")
	k1 := r5Kept(t, a, refreshKey(s), "first refresh")
	r5Expire(k1)
	r5Works(t, a, jar, "second refresh while storage fails")
	k2 := r5Kept(t, a, refreshKey(k1), "second refresh")
	r5Expire(k2)
	r5Works(t, a, jar, "third refresh while storage fails")
	if n := e.op.TokenCalls("refresh_token"); n != 3 {
		t.Fatalf("%d provider refreshes, want 3", n)
	}
	st.fail.Store(false)
	r5Works(t, a, jar, "after storage is back")
}

// DEFENCE. TestRedteam5StoreLogoutWhileKept:
// attack: A keeps a refresh storage refused (it holds the live refresh
// token); the user logs out on B (or the provider's back-channel logout
// reaches B); then A's storage recovers, and copies of the cookie are
// replayed on A, before and after the kept access token expires.
// expected: the session stays ended: not served, no record written again,
// and the kept refresh token is not spent at the provider. A new login
// works.
func TestRedteam5StoreLogoutWhileKept(t *testing.T) {
	for _, tc := range []struct {
		name        string
		cache       time.Duration
		backchannel bool
	}{
		{"logout", -1, false},
		{"logout/session_cache", time.Minute, false},
		{"backchannel", -1, true},
		{"backchannel/session_cache", time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newR4Env(t)
			a, st := e.r5Failing(t, tc.cache)
			b := e.instance(t, "store", -1, nil, false)
			s, jar := e.login(t, a)
			st.fail.Store(true)
			r5Works(t, a, jar, "refresh while storage fails")
			r5Works(t, a, jar, "the kept refresh") // A's session_cache now holds the record
			k1 := r5Kept(t, a, refreshKey(s), "refresh")
			if tc.backchannel {
				e.backchannelLogout(t, b, s.ProviderSID)
			} else {
				r4Logout(t, b, jar.clone())
			}
			st.fail.Store(false)
			calls := e.op.TokenCalls("refresh_token")
			for _, expired := range []bool{false, true} {
				if expired {
					r5Expire(k1)
				}
				for i := range 2 {
					if _, user := r4Serve(t, a, "GET", r4API, jar.clone()); user != "" {
						t.Fatalf("expired=%v replay %d on A after the logout on B: served %q", expired, i, user)
					}
				}
			}
			if n := e.op.TokenCalls("refresh_token"); n != calls {
				t.Fatalf("the kept refresh token was spent after the logout: %d provider refreshes, want %d", n, calls)
			}
			if cur, _ := b.rt.stored.load(context.Background(), s.ID); cur != nil {
				t.Fatal("the ended session's record was written again")
			}
			_, fresh := e.login(t, a)
			r5Works(t, a, fresh, "legitimate: a new login on A")
		})
	}
}

// DEFENCE. TestRedteam5StoreKeptBurstAtExpiry:
// attack (load): the refresh A keeps in memory expires, with storage back
// or still failing; a burst of requests carrying the cookie arrives at
// once (and again right after).
// expected: one provider refresh (with the kept refresh token) for the
// whole burst, every request served, none cleared, the result stored once
// storage works; no data race (run with -race).
func TestRedteam5StoreKeptBurstAtExpiry(t *testing.T) {
	for _, failing := range []bool{false, true} {
		t.Run(map[bool]string{false: "storage back", true: "storage failing"}[failing], func(t *testing.T) {
			e := newR4Env(t)
			a, st := e.r5Failing(t, time.Minute)
			s, jar := e.login(t, a)
			st.fail.Store(true)
			r5Works(t, a, jar, "refresh while storage fails")
			k1 := r5Kept(t, a, refreshKey(s), "refresh")
			r5Expire(k1)
			st.fail.Store(failing)
			for round := range 2 {
				start := time.Now()
				var wg sync.WaitGroup
				errs := make(chan string, 32)
				for range 16 {
					wg.Add(1)
					go func() {
						defer wg.Done()
						w, user, err := r4Do(a, "GET", r4API, jar.clone())
						if err != nil || user != testop.UserID || clearsSession(a, w) {
							errs <- w.Body.String() + " user=" + user
						}
					}()
				}
				wg.Wait()
				close(errs)
				for msg := range errs {
					t.Fatalf("round %d: a request of the burst was not served: %s", round, msg)
				}
				took := time.Since(start)
				t.Logf("round %d: 16 requests in %v, %d storage locks so far", round, took, st.locks.Load())
				if took > 3*time.Second {
					t.Errorf("round %d: 16 requests took %v: each one took the record's storage lock to retry the store", round, took)
				}
			}
			if n := e.op.TokenCalls("refresh_token"); n != 2 {
				t.Fatalf("%d provider refreshes, want 2 (one while storage failed, one for the burst)", n)
			}
			if failing {
				return
			}
			cur, _ := a.rt.stored.load(context.Background(), s.ID)
			if cur == nil || cur.RefreshToken == s.RefreshToken || cur.RefreshToken == k1.RefreshToken || !cur.usable(time.Now()) {
				t.Fatal("the burst's refresh was not stored")
			}
		})
	}
}

// FINDING. TestRedteam5StoreKeptOnTwoInstances:
// attack (fault, provider without rotation: every refresh hands back the
// same refresh token): storage refuses A's refresh of the record (K_A is
// kept); a second later B refreshes the record and stores it (R2: a newer
// access token, newer claims, a later expiry). A's storage recovers, and
// the cookie comes to A once R2 is within refresh_before of its expiry
// while K_A is still usable (access tokens of 6 s, refresh_before 3 s
// here: the same window exists with 5 min and 1 min).
// expected: A does not write its older K_A over R2 (update promises "a
// newer record (refreshed meanwhile on another instance) is kept"): with a
// non-rotating token, refreshKey (session id + refresh token) and the
// refresh-token match of update cannot tell R2 from the record K_A was
// made from.
func TestRedteam5StoreKeptOnTwoInstances(t *testing.T) {
	op, err := testop.Start(testop.Options{DisableRefreshTokenRotation: true, AccessTokenLifetime: 6 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = op.Close() })
	e := &r4Env{op: op, dir: t.TempDir()}
	early := func(o *OIDC) { o.RefreshBefore = caddy.Duration(3 * time.Second) }
	st := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/sessions/"}
	a := e.instance(t, "store", -1, st, false, early)
	b := e.instance(t, "store", -1, nil, false, early)
	s, jar := e.login(t, a)
	st.fail.Store(true)
	r5Works(t, a, jar, "A while storage fails")
	ka := r5Kept(t, a, refreshKey(s), "refresh on A")
	time.Sleep(1100 * time.Millisecond)
	// The record still is the login's (stale access token): B refreshes it.
	r5Works(t, b, jar, "B refreshes the record")
	r2, _ := b.rt.stored.load(context.Background(), s.ID)
	if r2 == nil || r2.AccessToken == s.AccessToken || r2.AccessToken == ka.AccessToken || r2.Expiry <= ka.Expiry {
		t.Fatal("setup: B did not store a later refresh of its own")
	}
	st.fail.Store(false)
	time.Sleep(time.Until(time.Unix(r2.Expiry-3, 0).Add(200 * time.Millisecond))) // R2 is due
	if !ka.usable(time.Now()) {
		t.Fatal("setup timing: K_A expired before R2 was due")
	}
	r5Works(t, a, jar, "A once R2 is due")
	cur, _ := b.rt.stored.load(context.Background(), s.ID)
	if cur == nil || cur.AccessToken == ka.AccessToken || cur.Expiry < r2.Expiry {
		t.Fatal("A's older kept refresh K_A was written over B's newer record R2 (rolled back to older tokens and claims)")
	}
	r5Works(t, b, jar, "legitimate: B after A")
}

// DEFENCE. TestRedteam5CookieLogoutAfterRefresh (cookie mode equivalent):
// attack: A refreshes a cookie session (C0 -> C1; the result serves C0's
// copies for a minute from recentResults); the user logs out with C1 on
// B; A reloads the revocations; copies of C0 and C1 are replayed on A.
// expected: neither is served (the revocation is checked before the kept
// result is used), no provider refresh; a new login works.
func TestRedteam5CookieLogoutAfterRefresh(t *testing.T) {
	e := newR4Env(t)
	a := e.instance(t, "cookie", -1, nil, false)
	b := e.instance(t, "cookie", -1, nil, false)
	_, old := e.login(t, a)
	w, user := r4Serve(t, a, "GET", r4API, old.clone())
	if user != testop.UserID {
		t.Fatalf("refresh on A: %d %q", w.Code, user)
	}
	cur := old.clone()
	cur.update(w)
	r4Logout(t, b, cur.clone())
	if err := a.loadRevocations(context.Background()); err != nil {
		t.Fatal(err)
	}
	calls := e.op.TokenCalls("refresh_token")
	for which, j := range map[string]r4Jar{"old": old, "new": cur} {
		if _, user := r4Serve(t, a, "GET", r4API, j.clone()); user != "" {
			t.Fatalf("the %s cookie is served on A after the logout on B", which)
		}
	}
	if n := e.op.TokenCalls("refresh_token"); n != calls {
		t.Fatalf("%d provider refreshes after the logout, want %d", n, calls)
	}
	time.Sleep(2 * time.Millisecond)
	_, fresh := e.login(t, a)
	r5Works(t, a, fresh, "legitimate: a new login")
}

// DEFENCE. TestRedteam5RefusedKeepsNewerCookie:
// attack: cookie mode, two instances: B refreshes C0 (-> C1); a copy of C0
// is replayed on A, whose provider refresh is refused (the token rotated)
// and remembered; C0 is replayed again.
// expected: C0 is refused on A without a provider call the second time;
// C1, the newer cookie of the same session, keeps working on A (the
// refused cache is keyed by the refresh token, not the session), and so
// does C1's own next refresh there.
func TestRedteam5RefusedKeepsNewerCookie(t *testing.T) {
	e := newR4Env(t)
	a := e.instance(t, "cookie", -1, nil, false)
	b := e.instance(t, "cookie", -1, nil, false)
	s, old := e.login(t, a)
	w, user := r4Serve(t, b, "GET", r4API, old.clone())
	if user != testop.UserID {
		t.Fatalf("refresh on B: %d %q", w.Code, user)
	}
	cur := old.clone()
	cur.update(w)
	for i := range 2 {
		if _, user := r4Serve(t, a, "GET", r4API, old.clone()); user != "" {
			t.Fatalf("replay %d of the spent cookie on A served %q", i, user)
		}
	}
	if n := e.op.TokenCalls("refresh_token"); n != 2 {
		t.Fatalf("%d provider refreshes, want 2 (B's, and A's refused one once)", n)
	}
	if _, ok := a.rt.refused.get(refreshKey(s)); !ok {
		t.Fatal("setup: A did not remember the refusal")
	}
	r5Works(t, a, cur, "legitimate: the newer cookie on A")
	// Its own refresh on A (its access token made stale).
	r := httptest.NewRequest("GET", r4API, nil)
	r.Header.Set("Cookie", cur.header())
	ns, err := a.loadSession(r)
	if err != nil || ns == nil {
		t.Fatalf("newer cookie does not open: %v", err)
	}
	if _, err := a.refresh(context.Background(), a.rt.disc.Get(context.Background()), ns, true); err != nil {
		t.Fatalf("legitimate: a forced refresh of the newer cookie on A: %v", err)
	}
}

// DEFENCE. TestRedteam5AZATKeptGrantTwiceExpires (the grant equivalent of
// the two findings above):
// attack (fault): grant storage refuses A's writes for longer than two
// access token lifetimes: the kept grant expires and is refreshed again,
// twice, while only in memory; then storage comes back.
// expected: each refresh spends the live refresh token (the AZAT keeps
// working, three provider calls), and the last one is stored.
func TestRedteam5AZATKeptGrantTwiceExpires(t *testing.T) {
	e := newR4Env(t)
	ctx := context.Background()
	st := &r4Storage{FileStorage: &certmagic.FileStorage{Path: e.dir}, failOn: "/azat/grants/"}
	a := e.instance(t, "cookie", -1, st, true)
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
	serve := func(what string) {
		t.Helper()
		w, user := r4Serve(t, a, "GET", "http://proxy.example/api", nil, "Authorization", "Bearer "+m.Token)
		if user != testop.UserID {
			t.Fatalf("%s: %d %q", what, w.Code, user)
		}
	}
	st.fail.Store(true)
	serve("first refresh while storage fails")
	var last string
	for i := range 2 {
		kept, ok := a.rt.unstored.get(key)
		if !ok {
			t.Fatalf("setup: no grant kept in memory (%d)", i)
		}
		last = kept.g.RefreshToken
		kept.g.Expiry = time.Now().Add(-time.Second).Unix()
		serve("a refresh of the kept grant while storage fails")
	}
	if n := e.op.TokenCalls("refresh_token"); n != 3 {
		t.Fatalf("%d provider refreshes, want 3", n)
	}
	st.fail.Store(false)
	serve("after storage is back")
	g, err := a.azat.Grants().LoadFresh(ctx, key)
	if err != nil || !g.Usable() || g.RefreshToken == rt || g.RefreshToken == last {
		t.Fatalf("the live grant was not stored: %v", err)
	}
}

// FINDING (low). TestRedteam5ForceRefreshNonRotating:
// attack: a provider that does not rotate refresh tokens; a session is
// refreshed (automatically), then the user asks for a forced refresh (the
// refresh endpoint: new claims now, e.g. after a role change) within a
// minute.
// expected: the forced refresh asks the provider. Found: refreshKey is the
// session id and the refresh token, which a non-rotating provider never
// changes, so recentResults hands back the previous refresh's result (for a
// minute; for 24 h when it was a kept, unstored refresh) and force is
// ignored.
func TestRedteam5ForceRefreshNonRotating(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			op, err := testop.Start(testop.Options{DisableRefreshTokenRotation: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = op.Close() })
			e := &r4Env{op: op, dir: t.TempDir()}
			a := e.instance(t, mode, -1, nil, false)
			_, jar := e.login(t, a)
			w, user := r4Serve(t, a, "GET", r4API, jar.clone())
			if user != testop.UserID {
				t.Fatalf("refresh: %d %q", w.Code, user)
			}
			jar.update(w)
			r := httptest.NewRequest("GET", r4API, nil)
			r.Header.Set("Cookie", jar.header())
			s, err := a.loadSession(r)
			if err != nil || s == nil {
				t.Fatalf("refreshed cookie does not open: %v", err)
			}
			ns, err := a.refresh(context.Background(), a.rt.disc.Get(context.Background()), s, true)
			if err != nil {
				t.Fatal(err)
			}
			if n := e.op.TokenCalls("refresh_token"); n != 2 || ns.AccessToken == s.AccessToken {
				t.Fatalf("a forced refresh made %d provider refreshes in all (want 2) and returned the same access token: %v", n, ns.AccessToken == s.AccessToken)
			}
		})
	}
}
