package caddyoidc

import (
	"context"
	"fmt"
	"io/fs"
	"net/http/httptest"
	goruntime "runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// memStorage is a certmagic.Storage in memory (no locking across
// processes), so that footprint benchmarks measure the caches, not the disk.
type memStorage struct {
	mu sync.Mutex
	m  map[string][]byte
}

func (s *memStorage) Lock(context.Context, string) error   { return nil }
func (s *memStorage) Unlock(context.Context, string) error { return nil }
func (s *memStorage) Store(_ context.Context, k string, v []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[k] = v
	return nil
}
func (s *memStorage) Load(_ context.Context, k string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[k]
	if !ok {
		return nil, fs.ErrNotExist
	}
	return v, nil
}
func (s *memStorage) Delete(_ context.Context, k string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, k)
	return nil
}
func (s *memStorage) Exists(_ context.Context, k string) bool {
	_, err := s.Load(context.Background(), k)
	return err == nil
}
func (s *memStorage) List(context.Context, string, bool) ([]string, error) { return nil, nil }
func (s *memStorage) Stat(_ context.Context, k string) (certmagic.KeyInfo, error) {
	v, err := s.Load(context.Background(), k)
	return certmagic.KeyInfo{Key: k, Size: int64(len(v))}, err
}

// bytesStored sums the sizes of the stored values whose key contains part.
func (s *memStorage) bytesStored(prefix string) (n int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.m {
		if strings.Contains(k, prefix) {
			n += int64(len(v))
		}
	}
	return n
}

// heapInUse returns the live heap after a full collection.
func heapInUse() uint64 {
	var m goruntime.MemStats
	goruntime.GC()
	goruntime.GC()
	goruntime.ReadMemStats(&m)
	return m.HeapAlloc
}

// footprintClaims are a typical user's identity claims.
func footprintClaims(i int) map[string]any {
	return map[string]any{"iss": "https://idp.example.com", "sub": fmt.Sprintf("user-%08d", i),
		"email": fmt.Sprintf("user%d@example.com", i), "name": "Jane Doe", "preferred_username": fmt.Sprintf("user%d", i),
		"groups": []any{"admin", "users"}, "email_verified": true}
}

// BenchmarkFootprintRAM reports what b.N users cost in storage and in this
// process: for AZAT grants, the sealed record and the decoded grant in the
// grant cache (filled by the request path's Load); for `session store`
// sessions, the sealed record and the decoded session in the stored-session
// cache; for cookie sessions, the cookie and the decoded-session cache
// entry. Tokens are random strings of typical size: 900-byte access and ID
// tokens, a 200-byte refresh token. Run with -benchtime 100000x.
func BenchmarkFootprintRAM(b *testing.B) {
	tok := func(n int) string { return seal.RandomString(n * 3 / 4)[:n] }
	ctx := context.Background()

	b.Run("grant", func(b *testing.B) {
		st := &memStorage{m: map[string][]byte{}}
		sealer, _ := seal.New([]byte(strings.Repeat("g", 32)), "azat-grants")
		writer := azatauth.NewGrantStore(st, sealer)
		n := b.N
		keys := make([]string, n)
		for i := range n {
			keys[i] = fmt.Sprintf("https://idp.example.com#user-%08d", i)
			if err := writer.Put(ctx, &azatauth.Grant{Key: keys[i], AccessToken: tok(900), TokenType: "Bearer",
				Expiry: time.Now().Add(time.Hour).Unix(), RefreshToken: tok(200), IDToken: tok(900),
				Claims: footprintClaims(i)}); err != nil {
				b.Fatal(err)
			}
		}
		reader := azatauth.NewGrantStore(st, sealer).WithCache(time.Hour)
		before := heapInUse()
		b.ResetTimer()
		for i := range n {
			if g, err := reader.Load(ctx, keys[i]); err != nil || g == nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		after := heapInUse()
		goruntime.KeepAlive(reader)
		goruntime.KeepAlive(keys) // measured in before: must not be freed before after
		b.ReportMetric(float64(st.bytesStored(""))/float64(n), "storage-B/grant")
		b.ReportMetric(float64(int64(after)-int64(before))/float64(n), "RAM-B/grant")
	})

	newHandler := func(b *testing.B, mode string, st *memStorage) *OIDC {
		o := &OIDC{Provider: Provider{Issuer: "http://127.0.0.1:1", ClientID: "web"}, CookieSecret: strings.Repeat("s", 32),
			Session: mode, SessionCache: -1}
		if err := o.provision(ctx, zap.NewNop(), st); err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = o.Cleanup() })
		return o
	}
	newSession := func(i int) *session {
		now := time.Now()
		claims := footprintClaims(i)
		return &session{ID: seal.RandomString(32), AccessToken: tok(900), TokenType: "Bearer", RefreshToken: tok(200),
			IDToken: tok(900), Expiry: now.Add(time.Hour).Unix(), Created: now.Unix(),
			Identity: newIdentity(claims, []string{"groups"}, nil)}
	}

	b.Run("stored-session", func(b *testing.B) {
		st := &memStorage{m: map[string][]byte{}}
		o := newHandler(b, "store", st)
		n := b.N
		ids := make([]string, n)
		for i := range n {
			s := newSession(i)
			ids[i] = s.ID
			if err := o.rt.stored.store(ctx, s); err != nil {
				b.Fatal(err)
			}
		}
		// The request path's cache, unbounded here to hold all n.
		o.rt.stored.cacheTTL, o.rt.stored.cache = time.Hour, expiry.New[string, *session](n)
		before := heapInUse()
		b.ResetTimer()
		for _, id := range ids {
			if s, err := o.rt.stored.open(ctx, o.rt.sealer.Seal([]byte(id), o.rt.stored.purpose())); err != nil || s == nil {
				b.Fatal(err)
			}
		}
		b.StopTimer()
		after := heapInUse()
		goruntime.KeepAlive(o)
		goruntime.KeepAlive(ids)
		b.ReportMetric(float64(st.bytesStored("/sessions/"))/float64(n), "storage-B/session")
		b.ReportMetric(float64(int64(after)-int64(before))/float64(n), "RAM-B/session")
	})

	b.Run("cookie-session", func(b *testing.B) {
		o := newHandler(b, "cookie", &memStorage{m: map[string][]byte{}})
		n := b.N
		cookies := make([]string, n)
		var cookieBytes int
		for i := range n {
			w := httptest.NewRecorder()
			if err := o.createSession(w, httptest.NewRequest("GET", "https://app.example/", nil), newSession(i)); err != nil {
				b.Fatal(err)
			}
			var parts []string
			for _, c := range w.Result().Cookies() {
				parts = append(parts, c.Name+"="+c.Value)
				cookieBytes += len(c.Name) + 1 + len(c.Value)
			}
			cookies[i] = strings.Join(parts, "; ")
		}
		o.rt.sessions.(*cookieSessions).cache = expiry.New[string, *session](n)
		before := heapInUse()
		b.ResetTimer()
		for _, c := range cookies {
			r := httptest.NewRequest("GET", "https://app.example/", nil)
			r.Header.Set("Cookie", strings.Clone(c)) // a request's own header, as the cache keeps it
			if s, err := o.loadSession(r); err != nil || s == nil {
				b.Fatal("cookie session does not load", err)
			}
		}
		b.StopTimer()
		after := heapInUse()
		goruntime.KeepAlive(o)
		goruntime.KeepAlive(cookies)
		b.ReportMetric(float64(cookieBytes)/float64(n), "cookie-B/session")
		b.ReportMetric(float64(int64(after)-int64(before))/float64(n), "RAM-B/session")
	})
}
