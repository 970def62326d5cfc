package nsstore

import (
	"context"
	"slices"
	"testing"

	"github.com/caddyserver/certmagic"
)

// TestStorage: the handler's keys live under its namespace; listings
// and Stat answer them in the caller's spelling; another namespace on the
// same storage sees none of them.
func TestStorage(t *testing.T) {
	ctx := context.Background()
	raw := &certmagic.FileStorage{Path: t.TempDir()}
	a, b := New(raw, "aaaa"), New(raw, "bbbb")
	if err := a.Store(ctx, "caddy-oidc/sessions/x", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if !raw.Exists(ctx, "caddy-oidc/ns/aaaa/sessions/x") || raw.Exists(ctx, "caddy-oidc/sessions/x") {
		t.Fatal("key not confined to the namespace")
	}
	if b.Exists(ctx, "caddy-oidc/sessions/x") {
		t.Fatal("another namespace sees the key")
	}
	keys, err := a.List(ctx, "caddy-oidc/sessions", false)
	if err != nil || !slices.Equal(keys, []string{"caddy-oidc/sessions/x"}) {
		t.Fatalf("List = %v, %v", keys, err)
	}
	if ki, err := a.Stat(ctx, "caddy-oidc/sessions/x"); err != nil || ki.Key != "caddy-oidc/sessions/x" {
		t.Fatalf("Stat = %+v, %v", ki, err)
	}
	if _, err := b.Load(ctx, "caddy-oidc/sessions/x"); err == nil {
		t.Fatal("another namespace loads the key")
	}
	if err := a.Lock(ctx, "caddy-oidc/sessions/x"); err != nil {
		t.Fatal(err)
	}
	if err := a.Unlock(ctx, "caddy-oidc/sessions/x"); err != nil {
		t.Fatal(err)
	}
}

func TestIDs(t *testing.T) {
	ctx := context.Background()
	raw := &certmagic.FileStorage{Path: t.TempDir()}
	if ids, err := IDs(ctx, raw); err != nil || len(ids) != 0 {
		t.Fatalf("empty storage: %v %v", ids, err)
	}
	_ = New(raw, "aaaa").Store(ctx, "caddy-oidc/x", []byte("1"))
	_ = New(raw, "bbbb").Store(ctx, "caddy-oidc/y", []byte("1"))
	ids, err := IDs(ctx, raw)
	slices.Sort(ids)
	if err != nil || !slices.Equal(ids, []string{"aaaa", "bbbb"}) {
		t.Fatalf("IDs = %v, %v", ids, err)
	}
}
