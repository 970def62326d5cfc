package azatauth

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

func newTestStore(t *testing.T) (*GrantStore, certmagic.Storage) {
	t.Helper()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	sealer, err := seal.New([]byte(strings.Repeat("g", 32)), "azat-grants")
	if err != nil {
		t.Fatal(err)
	}
	return NewGrantStore(st, sealer), st
}

func TestGrantJTIWindow(t *testing.T) {
	ctx := context.Background()
	gs, st := newTestStore(t)
	const key = "https://op#alice"
	if _, _, err := gs.NextJTI(ctx, key); !errors.Is(err, ErrNoGrant) {
		t.Fatalf("mint without grant: %v", err)
	}
	if err := gs.Put(ctx, &Grant{Key: key, RefreshToken: "rt1", AccessToken: "at1"}); err != nil {
		t.Fatal(err)
	}
	j1, _, err := gs.NextJTI(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	j2, g, _ := gs.NextJTI(ctx, key)
	if j2 != j1+1 || !g.JTIValid(j1) || !g.JTIValid(j2) || g.JTIValid(j2+1) {
		t.Fatalf("window %d..%d, jti %d %d", g.MinJTI, g.MaxJTI, j1, j2)
	}
	// The stored record is sealed: no token in clear text.
	raw, _ := st.Load(ctx, StorageKey(key))
	if strings.Contains(string(raw), "rt1") || strings.Contains(string(raw), "alice") {
		t.Fatal("grant stored in clear")
	}
	// Revoke: every token so far is invalid, new ones are valid.
	if err := gs.Revoke(ctx, key); err != nil {
		t.Fatal(err)
	}
	g, _ = gs.Load(ctx, key)
	if g.JTIValid(j1) || g.JTIValid(j2) {
		t.Fatal("revoked tokens still valid")
	}
	j3, g, _ := gs.NextJTI(ctx, key)
	if !g.JTIValid(j3) {
		t.Fatal("new token invalid after revoke")
	}
	// A new login keeps the window.
	if err := gs.Put(ctx, &Grant{Key: key, RefreshToken: "rt2"}); err != nil {
		t.Fatal(err)
	}
	if g, _ = gs.Load(ctx, key); g.JTIValid(j1) || !g.JTIValid(j3) || g.RefreshToken != "rt2" {
		t.Fatalf("login changed the window: %+v", g)
	}
	// invalid_grant: tokens dropped, every AZAT revoked, tombstone kept.
	if err := gs.Forget(ctx, key); err != nil {
		t.Fatal(err)
	}
	if g, _ = gs.Load(ctx, key); g.Usable() || g.JTIValid(j3) {
		t.Fatalf("forgotten grant still usable: %+v", g)
	}
	// Even deleting the record from storage and logging in again does not
	// revive old tokens.
	if err := st.Delete(ctx, StorageKey(key)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Millisecond)
	if err := gs.Put(ctx, &Grant{Key: key, RefreshToken: "rt3"}); err != nil {
		t.Fatal(err)
	}
	if g, _ = gs.Load(ctx, key); g.JTIValid(j1) || g.JTIValid(j3) {
		t.Fatal("recreated grant revived old tokens")
	}
}

func TestGrantStoreWrongSecret(t *testing.T) {
	ctx := context.Background()
	gs, st := newTestStore(t)
	_ = gs.Put(ctx, &Grant{Key: "k", RefreshToken: "rt"})
	other, _ := seal.New([]byte(strings.Repeat("o", 32)), "azat-grants")
	if _, err := NewGrantStore(st, other).Load(ctx, "k"); err == nil {
		t.Fatal("opened a grant with another secret")
	}
	// A record copied under another user's key does not open either.
	raw, _ := st.Load(ctx, StorageKey("k"))
	_ = st.Store(ctx, StorageKey("mallory"), raw)
	if _, err := gs.Load(ctx, "mallory"); err == nil {
		t.Fatal("grant record accepted under another key")
	}
}

// TestGrantRevocationAlwaysMovesWindow: every revocation (Revoke, Forget)
// moves MinJTI, also when no token was minted since the last one, and a new
// login keeps the moved window; so a MinJTI recorded earlier (a device
// approval) tells that a revocation happened since. Minting does not move it.
func TestGrantRevocationAlwaysMovesWindow(t *testing.T) {
	ctx := context.Background()
	gs, _ := newTestStore(t)
	const key = "https://op#alice"
	if err := gs.Put(ctx, &Grant{Key: key, RefreshToken: "rt1"}); err != nil {
		t.Fatal(err)
	}
	minOf := func() uint64 {
		t.Helper()
		g, err := gs.LoadFresh(ctx, key)
		if err != nil || g == nil {
			t.Fatalf("load: %v %v", g, err)
		}
		if g.MinJTI > g.MaxJTI {
			t.Fatalf("window inverted: %d..%d", g.MinJTI, g.MaxJTI)
		}
		return g.MinJTI
	}
	m0 := minOf()
	if _, _, err := gs.NextJTI(ctx, key); err != nil || minOf() != m0 {
		t.Fatalf("a mint moved MinJTI (or failed: %v)", err)
	}
	if err := gs.Put(ctx, &Grant{Key: key, RefreshToken: "rt2"}); err != nil || minOf() != m0 {
		t.Fatalf("a login moved MinJTI (or failed: %v)", err)
	}
	steps := []struct {
		name string
		do   func() error
	}{
		{"revoke after a mint", func() error { return gs.Revoke(ctx, key) }},
		{"revoke with nothing minted", func() error { return gs.Revoke(ctx, key) }},
		{"forget with nothing minted", func() error { return gs.Forget(ctx, key) }},
		{"forget of a tombstone", func() error { return gs.Forget(ctx, key) }},
	}
	prev := m0
	for _, st := range steps {
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		m := minOf()
		if m <= prev {
			t.Fatalf("%s: MinJTI %d, was %d: the window did not move", st.name, m, prev)
		}
		prev = m
	}
	// Logging in again after the revocations keeps the moved window, and
	// a token minted now is valid.
	if err := gs.Put(ctx, &Grant{Key: key, RefreshToken: "rt3"}); err != nil || minOf() != prev {
		t.Fatalf("re-login changed MinJTI (or failed: %v)", err)
	}
	jti, g, err := gs.NextJTI(ctx, key)
	if err != nil || !g.JTIValid(jti) || jti < prev {
		t.Fatalf("mint after re-login: jti %d, window %d..%d, %v", jti, g.MinJTI, g.MaxJTI, err)
	}
	// A tombstone is not usable and holds no provider token.
	if tb := g.Tombstone(); tb.Usable() || tb.AccessToken != "" || tb.MinJTI <= jti || tb.Key != key {
		t.Fatalf("tombstone %+v", tb)
	}
}
