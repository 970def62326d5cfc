package caddyoidc

import (
	"context"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// loadCountingStorage counts storage reads.
type loadCountingStorage struct {
	*certmagic.FileStorage
	loads atomic.Int64
}

func (s *loadCountingStorage) Load(ctx context.Context, k string) ([]byte, error) {
	s.loads.Add(1)
	return s.FileStorage.Load(ctx, k)
}

// TestStoredSessionCache: with `session store`, a session read from storage
// is served from memory for session_cache; a deletion on the same instance
// applies at once, one on another instance sharing the storage within
// session_cache; a negative session_cache reads storage on every request.
func TestStoredSessionCache(t *testing.T) {
	dir := t.TempDir()
	instance := func(cache time.Duration) (*OIDC, *loadCountingStorage) {
		st := &loadCountingStorage{FileStorage: &certmagic.FileStorage{Path: dir}}
		o := &OIDC{Provider: Provider{Issuer: "http://127.0.0.1:1", ClientID: "web"}, CookieSecret: strings.Repeat("s", 32),
			Session: "store", SessionCache: caddy.Duration(cache)}
		if err := o.provision(context.Background(), zap.NewNop(), st); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = o.Cleanup() })
		return o, st
	}
	const ttl = 2 * time.Second // long enough for a loaded machine between two steps
	a, stA := instance(ttl)
	b, stB := instance(ttl)
	strict, stStrict := instance(-1)

	now := time.Now()
	s := &session{ID: seal.RandomString(32), AccessToken: "at", Expiry: now.Add(time.Hour).Unix(), Created: now.Unix(),
		Identity: &identity{Issuer: "http://127.0.0.1:1", Subject: "alice"}}
	if err := a.rt.stored.store(context.Background(), s); err != nil {
		t.Fatal(err)
	}
	cookie := chunkName(a.CookieName, 0) + "=" + a.rt.sealer.Seal([]byte(s.ID), a.rt.sessions.purpose())
	load := func(o *OIDC) *session {
		t.Helper()
		r := httptest.NewRequest("GET", "http://app.example/", nil)
		r.Header.Set("Cookie", cookie)
		got, err := o.loadSession(r)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	steps := []struct {
		name      string
		o         *OIDC
		st        *loadCountingStorage
		found     bool
		storeRead bool
	}{
		{"a: written by a, in memory", a, stA, true, false},
		{"b: first read", b, stB, true, true},
		{"b: cached", b, stB, true, false},
		{"strict: first read", strict, stStrict, true, true},
		{"strict: reads again", strict, stStrict, true, true},
	}
	for _, st := range steps {
		before := st.st.loads.Load()
		got := load(st.o)
		if (got != nil) != st.found {
			t.Fatalf("%s: session found %v, want %v", st.name, got != nil, st.found)
		}
		if read := st.st.loads.Load() > before; read != st.storeRead {
			t.Fatalf("%s: storage read %v, want %v", st.name, read, st.storeRead)
		}
	}

	// Logout on a: gone at once on a and on the strict instance; b follows
	// within its cache period.
	if err := a.rt.stored.delete(context.Background(), s.ID); err != nil {
		t.Fatal(err)
	}
	if load(a) != nil || load(strict) != nil {
		t.Fatal("a deleted session still loads on a or on the uncached instance")
	}
	if load(b) == nil {
		t.Log("b dropped the session before its cache period ended (slow machine?)")
	}
	time.Sleep(ttl + 50*time.Millisecond)
	if load(b) != nil {
		t.Fatal("the deleted session still loads on b after session_cache")
	}
}
