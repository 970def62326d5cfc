package caddyoidc

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// sessionsHandler provisions a handler with the given session mode on file
// storage dir (shared by "instances" given the same dir).
func sessionsHandler(t *testing.T, mode, dir string) *OIDC {
	t.Helper()
	o := &OIDC{Provider: Provider{Issuer: "http://127.0.0.1:1", ClientID: "web"}, CookieSecret: strings.Repeat("s", 32),
		Session: mode, SessionLifetime: caddy.Duration(time.Hour), SessionCache: caddy.Duration(-1)}
	if err := o.provision(context.Background(), zap.NewNop(), &certmagic.FileStorage{Path: dir}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Cleanup() })
	return o
}

func testSession(iss string) *session {
	return (&session{ID: "sid-" + time.Now().Format("150405.000000000"), AccessToken: "at-1", RefreshToken: "rt-1",
		Expiry: time.Now().Add(time.Hour).Unix(), Created: time.Now().Unix(),
		Identity: &identity{Issuer: iss, Subject: "alice", Claims: map[string]any{"sub": "alice"}}}).labelIdentity()
}

// TestSessionBackends is the contract both backends keep, written as the
// attacks on it: a session is opened only from the value its backend wrote,
// with the purpose of that backend (a cookie-mode value is no stored-session
// id, and the reverse); an ended session does not open again from a copy of
// its cookie, on another instance either; a refresh of an ended session
// does not bring it back.
func TestSessionBackends(t *testing.T) {
	for _, mode := range []string{"cookie", "store"} {
		t.Run(mode, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			a, b := sessionsHandler(t, mode, dir), sessionsHandler(t, mode, dir)
			sb := a.rt.sessions
			s := testSession(a.Issuer)
			raw, err := sb.save(ctx, s, true)
			if err != nil {
				t.Fatal(err)
			}
			for name, h := range map[string]*OIDC{"same instance": a, "other instance": b} {
				got, err := h.rt.sessions.open(ctx, raw)
				if err != nil || got == nil || got.ID != s.ID || got.AccessToken != "at-1" {
					t.Fatalf("%s: the legitimate cookie does not open its session: %+v, %v", name, got, err)
				}
			}
			// Tampered, and the other backend's purpose.
			if got, _ := sb.open(ctx, raw[:len(raw)-2]+"AA"); got != nil {
				t.Fatal("a tampered cookie value opened a session")
			}
			other := "store"
			if mode == "store" {
				other = "cookie"
			}
			o2 := sessionsHandler(t, other, dir)
			if got, _ := o2.rt.sessions.open(ctx, raw); got != nil {
				t.Fatalf("a %s-mode value opened as a %s-mode session", mode, other)
			}

			// A refresh goes through the backend once and is saved.
			calls := 0
			ns, persisted, err := sb.refresh(ctx, s, func(_ context.Context, cur *session) (*session, error) {
				calls++
				n := *cur
				n.AccessToken = "at-2"
				return &n, nil
			})
			if err != nil || !persisted || ns.AccessToken != "at-2" || calls != 1 {
				t.Fatalf("refresh: %+v %v %v calls=%d", ns, persisted, err, calls)
			}
			raw2, err := sb.save(ctx, ns, false)
			if err != nil {
				t.Fatal(err)
			}
			if got, _ := b.rt.sessions.open(ctx, raw2); got == nil || got.AccessToken != "at-2" {
				t.Fatalf("the refreshed session does not open on the other instance: %+v", got)
			}

			// Logout on instance a: every copy of both cookie values is
			// refused on both instances (b reloads revocations as it does
			// every revocation_reload).
			if _, err := sb.end(ctx, ns); err != nil {
				t.Fatal(err)
			}
			if err := b.loadRevocations(ctx); err != nil {
				t.Fatal(err)
			}
			for _, v := range []string{raw, raw2} {
				for name, h := range map[string]*OIDC{"same instance": a, "other instance": b} {
					if got, _ := h.rt.sessions.open(ctx, v); got != nil {
						t.Fatalf("%s: a copy of an ended session's cookie still opens", name)
					}
				}
			}
			if mode == "store" {
				// A refresh that was in flight does not store it again.
				_, _, err := sb.refresh(ctx, ns, func(context.Context, *session) (*session, error) {
					t.Fatal("an ended stored session was refreshed at the provider")
					return nil, nil
				})
				if !errors.Is(err, errGrantGone) {
					t.Fatalf("refresh of an ended stored session: %v", err)
				}
				unstored := *ns
				unstored.persisted = false // as a refresh whose store failed
				if _, err := sb.save(ctx, &unstored, false); !errors.Is(err, errSessionEnded) {
					t.Fatalf("saving a refreshed session over an ended one: %v", err)
				}
			}
		})
	}
}

// TestStoredRefreshReusesOtherInstances: instances sharing storage
// serialize a session's refresh on its storage lock and re-read the
// record, so the second instance reuses the first one's refresh instead of
// spending the (rotated) refresh token again.
func TestStoredRefreshReusesOtherInstances(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := sessionsHandler(t, "store", dir), sessionsHandler(t, "store", dir)
	s := testSession(a.Issuer)
	s.Expiry = time.Now().Add(time.Second).Unix() // within refresh_before
	if _, err := a.rt.sessions.save(ctx, s, true); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	at := func(_ context.Context, cur *session) (*session, error) {
		// The coordinator's re-check, on the record as re-read under the lock.
		if a.fresh(cur.AccessToken, cur.Expiry, s.AccessToken, false, time.Now()) {
			return cur, nil
		}
		calls.Add(1)
		if cur.RefreshToken != "rt-1" {
			return nil, errGrantGone // a rotating provider refuses a spent token
		}
		n := *cur
		n.AccessToken, n.RefreshToken, n.Expiry = "at-2", "rt-2", time.Now().Add(time.Hour).Unix()
		return &n, nil
	}
	na, _, err := a.rt.sessions.refresh(ctx, s, at)
	if err != nil {
		t.Fatal(err)
	}
	nb, persisted, err := b.rt.sessions.refresh(ctx, s, at) // b still holds the old session
	if err != nil || !persisted || nb.AccessToken != na.AccessToken {
		t.Fatalf("other instance: %+v %v %v", nb, persisted, err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d provider calls for one refresh across two instances, want 1", n)
	}
}

// TestStoredRefreshRefusedDeletes: a refresh the provider refuses ends the
// stored session; one that fails for unavailability keeps it.
func TestStoredRefreshRefusedDeletes(t *testing.T) {
	tests := []struct {
		name string
		err  error
		kept bool
	}{
		{"refused", errGrantGone, false},
		{"provider unreachable", errIdPUnavailable, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			o := sessionsHandler(t, "store", t.TempDir())
			s := testSession(o.Issuer)
			raw, err := o.rt.sessions.save(ctx, s, true)
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = o.rt.sessions.refresh(ctx, s, func(context.Context, *session) (*session, error) { return nil, tc.err })
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			got, _ := o.rt.sessions.open(ctx, raw)
			if (got != nil) != tc.kept {
				t.Fatalf("session kept = %v, want %v", got != nil, tc.kept)
			}
		})
	}
}

// TestStoredSessionRacingBackchannelLogout: a login that stores its session
// while a back-channel logout of that user runs is missed by the index
// (indexed after the logout read it, or stored after it deleted the
// record). The logout's revocation ends it all the same, on every
// instance; a login after the logout is not affected.
func TestStoredSessionRacingBackchannelLogout(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a, b := sessionsHandler(t, "store", dir), sessionsHandler(t, "store", dir)
	raced := testSession(a.Issuer)
	raced.CreatedMs = time.Now().UnixMilli() - 10
	if err := a.rt.stored.store(ctx, raced); err != nil { // stored, not indexed
		t.Fatal(err)
	}
	raw := a.rt.stored.sealer.Seal([]byte(raced.ID), a.rt.stored.purpose())
	if got, _ := b.rt.sessions.open(ctx, raw); got == nil {
		t.Fatal("the session does not open before the logout")
	}
	now := time.Now()
	ended, err := a.rt.stored.endIndexed(ctx, subIndex(raced.Identity.Issuer, raced.Identity.Subject))
	if err != nil || ended != 0 {
		t.Fatalf("the index held the raced session: %d, %v", ended, err)
	}
	if err := a.storeRevocation(ctx, revocation{Kind: "sub", Key: hashKey(raced.Identity.Issuer, raced.Identity.Subject),
		At: now.Unix(), AtMs: now.UnixMilli(), Until: now.Add(time.Hour).Unix()}); err != nil {
		t.Fatal(err)
	}
	if err := b.loadRevocations(ctx); err != nil {
		t.Fatal(err)
	}
	for name, h := range map[string]*OIDC{"instance a": a, "instance b": b} {
		if got, _ := h.rt.sessions.open(ctx, raw); got != nil {
			t.Fatalf("%s: a session the back-channel logout missed in the index still opens", name)
		}
	}
	later := testSession(a.Issuer)
	later.ID += "-later"
	later.CreatedMs = time.Now().UnixMilli() + 5
	rawLater, err := a.rt.sessions.save(ctx, later, true)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := b.rt.sessions.open(ctx, rawLater); got == nil {
		t.Fatal("a login after the back-channel logout is refused")
	}
}

// TestStoredUpdateKeepsNewerRecord: a refreshed session kept in memory
// (made from the record's refresh token rt-1) is not written over a record
// another instance refreshed since (rt-3): that one is newer.
func TestStoredUpdateKeepsNewerRecord(t *testing.T) {
	ctx := context.Background()
	o := sessionsHandler(t, "store", t.TempDir())
	s := testSession(o.Issuer)
	if _, err := o.rt.sessions.save(ctx, s, true); err != nil {
		t.Fatal(err)
	}
	kept := *s
	kept.AccessToken, kept.RefreshToken, kept.spent = "at-2", "rt-2", "rt-1"
	newer := *s
	newer.AccessToken, newer.RefreshToken = "at-3", "rt-3"
	if err := o.rt.stored.store(ctx, &newer); err != nil {
		t.Fatal(err)
	}
	if _, err := o.rt.sessions.save(ctx, &kept, false); err != nil {
		t.Fatal(err)
	}
	if cur, _ := o.rt.stored.load(ctx, s.ID); cur == nil || cur.RefreshToken != "rt-3" {
		t.Fatalf("a stale refresh overwrote the newer record: %+v", cur)
	}
	// Its own next version is written.
	next := newer
	next.AccessToken, next.RefreshToken, next.spent = "at-4", "rt-4", "rt-3"
	if _, err := o.rt.sessions.save(ctx, &next, false); err != nil {
		t.Fatal(err)
	}
	if cur, _ := o.rt.stored.load(ctx, s.ID); cur == nil || cur.RefreshToken != "rt-4" {
		t.Fatalf("the record's next version was not written: %+v", cur)
	}
}

// TestStoredEndReturnsLastVersion: a logout holding an old copy of a stored
// session (read before another instance refreshed it) gets the record's
// last version back, whose refresh token is the live one to revoke; the
// record is gone. With cookies the copy is all there is.
func TestStoredEndReturnsLastVersion(t *testing.T) {
	ctx := context.Background()
	for _, mode := range []string{"store", "cookie"} {
		t.Run(mode, func(t *testing.T) {
			o := sessionsHandler(t, mode, t.TempDir())
			old := testSession(o.Issuer)
			raw, err := o.rt.sessions.save(ctx, old, true)
			if err != nil {
				t.Fatal(err)
			}
			want := "rt-1"
			if mode == "store" {
				newer := *old
				newer.RefreshToken = "rt-2"
				if err := o.rt.stored.store(ctx, &newer); err != nil {
					t.Fatal(err)
				}
				want = "rt-2"
			}
			last, err := o.rt.sessions.end(ctx, old)
			if err != nil || last == nil || last.RefreshToken != want {
				t.Fatalf("end returned %+v, %v; want the refresh token %s", last, err, want)
			}
			if got, _ := o.rt.sessions.open(ctx, raw); got != nil {
				t.Fatal("the ended session still opens")
			}
		})
	}
}
