package caddyoidc

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// TestSweepDeletesExpired: storage does not keep sessions past their
// lifetime, index entries of gone sessions, or replay markers past their
// token's expiry; what is live stays. An expired session met on the
// request path is deleted there too.
func TestSweepDeletesExpired(t *testing.T) {
	ctx := context.Background()
	o, st := storeHandler(t)
	now := time.Now()
	mk := func(created time.Time, sub string) *session {
		s := &session{ID: seal.RandomString(32), AccessToken: "at", Created: created.Unix(), ProviderSID: "psid-" + sub,
			Identity: &identity{Issuer: o.Issuer, Subject: sub}}
		if err := o.rt.stored.store(ctx, s); err != nil {
			t.Fatal(err)
		}
		if err := o.rt.stored.index(ctx, s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	old, live := mk(now.Add(-2*time.Hour), "old"), mk(now, "live")
	met := mk(now.Add(-2*time.Hour), "met")
	marker := func(name string, exp time.Time) string {
		k := o.key("backchannel/jti/" + name)
		b, _ := json.Marshal(exp.Unix())
		if err := o.storage.Store(ctx, k, b); err != nil {
			t.Fatal(err)
		}
		return k
	}
	oldMarker, liveMarker := marker("old", now.Add(-time.Minute)), marker("live", now.Add(time.Hour))

	// Met on the request path: refused and deleted.
	if s, err := o.rt.stored.load(ctx, met.ID); s != nil || err != nil {
		t.Fatalf("expired session loaded: %v %v", s, err)
	}
	if o.storage.Exists(ctx, sessionKey(met.ID)) {
		t.Fatal("an expired session met on the request path was kept")
	}
	// The old session and the old marker; index entries of gone sessions
	// are kept while they are young (a login writes them before its record).
	if n := o.sweep(ctx, now); n != 2 {
		t.Errorf("swept %d records, want 2", n)
	}
	if keys, _ := o.storage.List(ctx, subIndex(o.Issuer, "met"), false); len(keys) != 1 {
		t.Errorf("a young index entry was swept: %d left", len(keys))
	}
	// Past the grace: the sid and sub index entries of the old and the met
	// session.
	if n := o.sweep(ctx, now.Add(indexGrace+time.Second)); n != 4 {
		t.Errorf("swept %d records, want 4", n)
	}
	for _, tt := range []struct {
		key  string
		want bool
	}{
		{sessionKey(old.ID), false},
		{sessionKey(live.ID), true},
		{oldMarker, false},
		{liveMarker, true},
	} {
		if got := o.storage.Exists(ctx, tt.key); got != tt.want {
			t.Errorf("%s exists %v after the sweep, want %v", tt.key, got, tt.want)
		}
	}
	for _, tt := range []struct {
		index string
		want  int
	}{
		{sidIndex(o.Issuer, old.ProviderSID), 0},
		{subIndex(o.Issuer, "old"), 0},
		{subIndex(o.Issuer, "met"), 0},
		{sidIndex(o.Issuer, live.ProviderSID), 1},
		{subIndex(o.Issuer, "live"), 1},
	} {
		keys, _ := o.storage.List(ctx, tt.index, false)
		if len(keys) != tt.want {
			t.Errorf("index %s: %d entries after the sweep, want %d", tt.index, len(keys), tt.want)
		}
	}
	// Everything the sweep touched stayed inside the handler's namespace.
	if keys, _ := st.List(ctx, "caddy-oidc", false); len(keys) != 1 || keys[0] != "caddy-oidc/ns" {
		t.Fatalf("keys outside the namespace: %v", keys)
	}
}

// storeHandler is a handler with `session store` and a one-hour lifetime on
// a file storage of its own, for tests inside the package.
func storeHandler(t *testing.T) (*OIDC, *certmagic.FileStorage) {
	t.Helper()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	o := &OIDC{Provider: Provider{Issuer: "http://127.0.0.1:1", ClientID: "web"}, CookieSecret: strings.Repeat("s", 32),
		Session: "store", SessionLifetime: caddy.Duration(time.Hour)}
	if err := o.provision(context.Background(), zap.NewNop(), st); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Cleanup() })
	return o, st
}
