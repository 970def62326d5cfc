package idp

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

func TestJWKSTTL(t *testing.T) {
	tests := []struct {
		name string
		hdr  map[string][]string
		want time.Duration
	}{
		{"no header: default", nil, jwksDefaultTTL},
		{"max-age honoured", map[string][]string{"Cache-Control": {"public, max-age=7200"}}, 2 * time.Hour},
		{"quoted max-age", map[string][]string{"Cache-Control": {`max-age="600"`}}, 10 * time.Minute},
		{"minus Age", map[string][]string{"Cache-Control": {"max-age=7200"}, "Age": {"3600"}}, time.Hour},
		{"below the floor", map[string][]string{"Cache-Control": {"max-age=5"}}, jwksMinTTL},
		{"zero", map[string][]string{"Cache-Control": {"max-age=0"}}, jwksMinTTL},
		{"no-store", map[string][]string{"Cache-Control": {"no-store"}}, jwksMinTTL},
		{"no-cache wins over max-age", map[string][]string{"Cache-Control": {"max-age=7200, no-cache"}}, jwksMinTTL},
		{"above the ceiling", map[string][]string{"Cache-Control": {"max-age=31536000"}}, jwksMaxTTL},
		{"too large to represent: the ceiling", map[string][]string{"Cache-Control": {"max-age=99999999999999999999"}}, jwksMaxTTL},
		{"repeated: the smallest", map[string][]string{"Cache-Control": {"max-age=7200", "max-age=600"}}, 10 * time.Minute},
		{"negative", map[string][]string{"Cache-Control": {"max-age=-1"}}, jwksMinTTL},
		{"garbage", map[string][]string{"Cache-Control": {"max-age=soon"}}, jwksMinTTL},
		{"other directives only", map[string][]string{"Cache-Control": {"public, must-revalidate"}}, jwksDefaultTTL},
		{"Age larger than max-age", map[string][]string{"Cache-Control": {"max-age=600"}, "Age": {"9000"}}, jwksMinTTL},
		{"case-insensitive", map[string][]string{"Cache-Control": {"MAX-AGE=600"}}, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := jwksTTL(http.Header(tt.hdr)); got != tt.want {
				t.Fatalf("jwksTTL = %v, want %v", got, tt.want)
			}
		})
	}
}

// jwksServer serves a JWKS with a max-age; the test removes keys and makes
// it fail.
type jwksServer struct {
	*httptest.Server
	mu      sync.Mutex
	keys    map[string]jwk.Key
	fetches int
	down    bool
}

func newJWKSServer(t *testing.T, maxAge string) *jwksServer {
	s := &jwksServer{keys: map[string]jwk.Key{}}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.fetches++
		if s.down {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		set := jwk.NewSet()
		for _, k := range s.keys {
			pub, _ := k.PublicKey()
			_ = set.AddKey(pub)
		}
		w.Header().Set("Cache-Control", "max-age="+maxAge)
		_ = json.NewEncoder(w).Encode(set)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) add(t *testing.T, kid string) jwk.Key {
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	k, err := jwk.FromRaw(priv)
	if err != nil {
		t.Fatal(err)
	}
	_ = k.Set(jwk.KeyIDKey, kid)
	s.mu.Lock()
	s.keys[kid] = k
	s.mu.Unlock()
	return k
}

func (s *jwksServer) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches
}

// age makes the key set's JWKS older by d (as if d had passed).
func (k *KeySet) age(d time.Duration) {
	k.mu.Lock()
	k.fresh = k.fresh.Add(-d)
	k.expires = k.expires.Add(-d)
	k.mu.Unlock()
}

// TestKeySetLifecycle: within its max-age the JWKS is not fetched again;
// past it, a key the provider removed stops verifying; while the provider
// is down the previous keys keep verifying, retried every jwksRetry, until
// jwksMaxStale past their max-age, then nothing verifies (fail closed).
func TestKeySetLifecycle(t *testing.T) {
	ctx := context.Background()
	srv := newJWKSServer(t, "3600")
	old, current := srv.add(t, "old"), srv.add(t, "current")
	ks := NewKeySet(srv.URL, http.DefaultClient)
	verify := func(key jwk.Key) error {
		_, err := ks.VerifySignature(ctx, signJWT(t, key, jwa.ES256, map[string]any{"sub": "x"}))
		return err
	}
	for range 5 {
		if verify(old) != nil || verify(current) != nil {
			t.Fatal("published keys do not verify")
		}
	}
	if n := srv.count(); n != 1 {
		t.Fatalf("%d fetches within max-age, want 1", n)
	}

	srv.mu.Lock()
	delete(srv.keys, "old")
	srv.mu.Unlock()
	ks.age(59 * time.Minute)
	if err := verify(old); err != nil || srv.count() != 1 {
		t.Fatalf("within max-age: err %v, %d fetches (want cached)", err, srv.count())
	}
	ks.age(2 * time.Minute)
	if err := verify(old); !errors.Is(err, errUnknownKey) {
		t.Fatalf("removed key past max-age: %v", err)
	}
	if err := verify(current); err != nil || srv.count() != 2 {
		t.Fatalf("current key after the refetch: err %v, %d fetches, want 2", err, srv.count())
	}

	srv.mu.Lock()
	srv.down = true
	srv.mu.Unlock()
	ks.age(61 * time.Minute)
	for range 3 {
		if err := verify(current); err != nil {
			t.Fatalf("provider down: cached key refused: %v", err)
		}
	}
	if n := srv.count(); n != 3 {
		t.Fatalf("%d fetches while down, want 3 (one retry per jwksRetry)", n)
	}
	ks.age(jwksMaxStale + jwksRetry)
	if err := verify(current); err == nil {
		t.Fatal("keys unconfirmed for longer than jwksMaxStale still verify")
	}
	srv.mu.Lock()
	srv.down = false
	srv.mu.Unlock()
	ks.age(jwksRetry)
	if err := verify(current); err != nil {
		t.Fatalf("after the provider recovered: %v", err)
	}
}

// FuzzJWKSTTL: whatever the provider sends, the JWKS lifetime stays within
// [jwksMinTTL, jwksMaxTTL].
func FuzzJWKSTTL(f *testing.F) {
	for _, s := range []string{"max-age=3600", "no-store", "max-age=-5, public", `max-age="1"`, "max-age=99999999999999999999", ""} {
		f.Add(s, "0")
	}
	f.Fuzz(func(t *testing.T, cc, age string) {
		h := http.Header{}
		h.Set("Cache-Control", cc)
		h.Set("Age", age)
		if got := jwksTTL(h); got < jwksMinTTL || got > jwksMaxTTL {
			t.Fatalf("jwksTTL(%q, age %q) = %v", cc, age, got)
		}
	})
}
