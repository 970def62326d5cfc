package azatauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// TestKeyringRotation: a key added by one instance is found by another
// sharing storage (on an unknown kid), and both keys are published.
func TestKeyringRotation(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	a, b := NewStorageKeyring(st), NewStorageKeyring(st)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s1 := mustLocal(t, k1)
	p1, _ := s1.PublicKey()
	if err := a.Add(ctx, p1); err != nil {
		t.Fatal(err)
	}
	if b.LookupOrReload(ctx, p1.KeyID()) == nil {
		t.Fatal("instance b does not see instance a's key")
	}
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p2, _ := mustLocal(t, k2).PublicKey()
	if err := a.Add(ctx, p2); err != nil {
		t.Fatal(err)
	}
	set := a.JWKS(p2.KeyID(), time.Hour)
	if set.Len() != 2 {
		t.Fatalf("published %d keys, want 2", set.Len())
	}
	first, _ := set.Key(0)
	if first.KeyID() != p2.KeyID() {
		t.Fatal("current key not first")
	}
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if _, isPriv := k.(jwk.ECDSAPrivateKey); isPriv {
			t.Fatal("private key published")
		}
	}
	// A verify-only site trusting a served JWKS finds both keys.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(set)
	}))
	defer srv.Close()
	remote := NewRemoteKeyring(srv.URL, http.DefaultClient)
	if remote.LookupOrReload(ctx, p1.KeyID()) == nil || remote.Lookup(p2.KeyID()) == nil {
		t.Fatal("remote keyring misses keys")
	}
	// Unknown kids reload at most every minKeyReload.
	if remote.LookupOrReload(ctx, "nope") != nil {
		t.Fatal("found unknown kid")
	}
}
