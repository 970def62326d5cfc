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
