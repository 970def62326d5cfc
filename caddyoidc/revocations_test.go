package caddyoidc

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// TestRevoked: a logout revokes one session id; a back-channel logout a
// provider session, or a user's sessions created up to its millisecond.
func TestRevoked(t *testing.T) {
	now := time.Now()
	mk := func(id, sid, sub string, createdMs int64) *session {
		s := &session{ID: id, ProviderSID: sid, Created: createdMs / 1000, CreatedMs: createdMs,
			Identity: &identity{Issuer: "https://idp", Subject: sub}}
		return s.labelIdentity()
	}
	var rv revocations
	at := now.UnixMilli()
	until := now.Add(time.Hour).Unix()
	rv.add(revocation{Kind: "id", Key: hashKey("logged-out"), At: now.Unix(), AtMs: at, Until: until})
	rv.add(revocation{Kind: "sid", Key: hashKey("https://idp", "psid-1"), At: now.Unix(), AtMs: at, Until: until})
	rv.add(revocation{Kind: "sub", Key: hashKey("https://idp", "bob"), At: now.Unix(), AtMs: at, Until: until})
	for _, tt := range []struct {
		name string
		s    *session
		want bool
	}{
		{"logged out", mk("logged-out", "", "alice", at-10), true},
		{"another session of the user", mk("other", "", "alice", at-10), false},
		{"provider session ended", mk("x", "psid-1", "carol", at-10), true},
		{"other provider session", mk("y", "psid-2", "carol", at-10), false},
		{"user ended, session before", mk("z", "", "bob", at-1), true},
		{"user ended, session at the same ms", mk("z", "", "bob", at), true},
		{"user ended, login 1 ms later (same second)", mk("z2", "", "bob", at+1), false},
		{"unlabelled session", &session{ID: "logged-out", Identity: &identity{Issuer: "https://idp", Subject: "alice"}}, true},
	} {
		if got := rv.revoked(tt.s); got != tt.want {
			t.Errorf("%s: revoked %v, want %v", tt.name, got, tt.want)
		}
	}
}

// BenchmarkRevocationCheck is the cost the revocation check adds to every
// cookie-session request once revocations exist (keys hashed once per
// decoded session, not per request).
func BenchmarkRevocationCheck(b *testing.B) {
	var rv revocations
	until := time.Now().Add(time.Hour).Unix()
	for i := range 1000 {
		rv.add(revocation{Kind: "id", Key: hashKey(strconv.Itoa(i)), At: 1, Until: until})
	}
	s := (&session{ID: "live", ProviderSID: "p", Identity: &identity{Issuer: "https://idp", Subject: "alice"}}).labelIdentity()
	b.ReportAllocs()
	for b.Loop() {
		if rv.revoked(s) {
			b.Fatal("revoked")
		}
	}
}

// TestRevocationReloadIncremental: an instance loads each stored revocation
// once, not every record on every reload; one written by another instance
// is applied at the next reload.
func TestRevocationReloadIncremental(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// b uses session store only so that no background reload runs during
	// the test (the reload itself does not depend on the mode).
	instance := func(mode string) (*OIDC, *loadCountingStorage) {
		st := &loadCountingStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
		o := &OIDC{Provider: Provider{Issuer: "http://127.0.0.1:1", ClientID: "web"}, CookieSecret: strings.Repeat("s", 32), Session: mode}
		if err := o.provision(ctx, zap.NewNop(), st); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = o.Cleanup() })
		return o, st
	}
	a, _ := instance("cookie")
	b, stB := instance("store")
	now := time.Now()
	sessions := make([]*session, 4)
	for i := range sessions {
		sessions[i] = (&session{ID: "s" + strconv.Itoa(i), Created: now.Unix(), Identity: &identity{Issuer: "i", Subject: "u"}}).labelIdentity()
	}
	for _, s := range sessions[:3] {
		if _, err := a.rt.sessions.end(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	reload := func() int64 {
		t.Helper()
		before := stB.loads.Load()
		if err := b.loadRevocations(ctx); err != nil {
			t.Fatal(err)
		}
		return stB.loads.Load() - before
	}
	if n := reload(); n != 3 {
		t.Fatalf("first reload loaded %d records, want 3", n)
	}
	if n := reload(); n != 0 {
		t.Fatalf("second reload loaded %d records, want 0", n)
	}
	if _, err := a.rt.sessions.end(ctx, sessions[3]); err != nil {
		t.Fatal(err)
	}
	if n := reload(); n != 1 {
		t.Fatalf("reload after one new revocation loaded %d records, want 1", n)
	}
	for i, s := range sessions {
		if !b.rt.revoked.revoked(s) {
			t.Errorf("session %d not revoked on the other instance", i)
		}
	}
}
