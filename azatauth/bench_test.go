package azatauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
	"go.uber.org/zap"
)

// countingStorage counts writes and reads of a real file storage.
type countingStorage struct {
	certmagic.Storage
	stores, loads, locks atomic.Int64
}

func (c *countingStorage) Store(ctx context.Context, k string, v []byte) error {
	c.stores.Add(1)
	return c.Storage.Store(ctx, k, v)
}

func (c *countingStorage) Load(ctx context.Context, k string) ([]byte, error) {
	c.loads.Add(1)
	return c.Storage.Load(ctx, k)
}

func (c *countingStorage) Lock(ctx context.Context, k string) error {
	c.locks.Add(1)
	return c.Storage.Lock(ctx, k)
}

// countingSigner counts signatures (KMS calls, for a KMS signer).
type countingSigner struct {
	Signer
	signs atomic.Int64
}

func (c *countingSigner) Sign(ctx context.Context, in []byte) ([]byte, error) {
	c.signs.Add(1)
	return c.Signer.Sign(ctx, in)
}

func newTestService(tb testing.TB) (*Service, *countingStorage, *countingSigner, string) {
	tb.Helper()
	st := &countingStorage{Storage: &certmagic.FileStorage{Path: tb.TempDir()}}
	c := &Config{GrantSecret: strings.Repeat("g", 32), Issuer: "https://proxy.example"}
	s, err := c.Provision(context.Background(), zap.NewNop(), st, nil)
	if err != nil {
		tb.Fatal(err)
	}
	cs := &countingSigner{Signer: s.signer}
	s.signer = cs
	ctx := context.Background()
	if err := s.Grants().Put(ctx, &Grant{Key: "op#alice", RefreshToken: "rt", AccessToken: "at",
		Expiry: time.Now().Add(time.Hour).Unix()}); err != nil {
		tb.Fatal(err)
	}
	m, err := s.Mint(ctx, "op#alice", "")
	if err != nil {
		tb.Fatal(err)
	}
	return s, st, cs, m.Token
}

// TestWarmVerifyTouchesNothing: repeated verification of one token makes no
// signature (KMS) call and no storage write; storage is read at most once
// per grant cache period.
func TestWarmVerifyTouchesNothing(t *testing.T) {
	s, st, cs, tok := newTestService(t)
	ctx := context.Background()
	stores, loads, locks, signs := st.stores.Load(), st.loads.Load(), st.locks.Load(), cs.signs.Load()
	for range 1000 {
		if _, _, err := s.Verify(ctx, tok, ""); err != nil {
			t.Fatal(err)
		}
	}
	if d := st.stores.Load() - stores; d != 0 {
		t.Errorf("%d storage writes for 1000 verifications", d)
	}
	if d := st.locks.Load() - locks; d != 0 {
		t.Errorf("%d storage locks for 1000 verifications", d)
	}
	if d := cs.signs.Load() - signs; d != 0 {
		t.Errorf("%d signing (KMS) calls for 1000 verifications", d)
	}
	if d := st.loads.Load() - loads; d > 1 {
		t.Errorf("%d storage reads for 1000 verifications within the grant cache period", d)
	}
}

func benchToken(b *testing.B) (string, jwk.Key) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s := mustLocal(b, k)
	pub, _ := s.PublicKey()
	now := time.Now()
	tok, err := Mint(context.Background(), s, &Claims{Issuer: "i", Audience: audience{"i"}, Subject: "op#alice",
		IssuedAt: now.Unix(), Expiry: now.Add(time.Hour).Unix(), ID: "1"})
	if err != nil {
		b.Fatal(err)
	}
	return tok, pub
}

// BenchmarkJWSVerifyFloor is jwx's jws.Verify of an AZAT with its key.
func BenchmarkJWSVerifyFloor(b *testing.B) {
	tok, pub := benchToken(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := jws.Verify([]byte(tok), jws.WithKey(pub.Algorithm(), pub)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyCold is the full offline check without any cache.
func BenchmarkVerifyCold(b *testing.B) {
	tok, pub := benchToken(b)
	keys := func(string) jwk.Key { return pub }
	want := Expectations{Issuer: "i", Audience: "i"}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Verify(tok, keys, want); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServiceVerifyWarm is Service.Verify of a token verified before:
// the verified-token cache and the grant cache.
func BenchmarkServiceVerifyWarm(b *testing.B) {
	s, _, _, tok := newTestService(b)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := s.Verify(ctx, tok, ""); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServiceVerifyWarmTrust is BenchmarkServiceVerifyWarm at a
// verify_only site that trusts another site's JWKS (`trust`): the cached
// path also checks that the token's kid is still published.
func BenchmarkServiceVerifyWarmTrust(b *testing.B) {
	ts := newTrustSites(b)
	ctx := context.Background()
	tok := ts.mint(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ts.verifier.Verify(ctx, tok, trustOrigin); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkServiceVerifyWarmTrustParallel is BenchmarkServiceVerifyWarmTrust
// from every core at once: the cached path's key check reads the keyring
// without a lock.
func BenchmarkServiceVerifyWarmTrustParallel(b *testing.B) {
	ts := newTrustSites(b)
	tok := ts.mint(b)
	if _, _, err := ts.verifier.Verify(context.Background(), tok, trustOrigin); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if _, _, err := ts.verifier.Verify(ctx, tok, trustOrigin); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkKeyringVerifies is the key check alone that the cached path
// makes for every use of a cached token at a `trust` site.
func BenchmarkKeyringVerifies(b *testing.B) {
	ts := newTrustSites(b)
	tok := ts.mint(b)
	if _, _, err := ts.verifier.Verify(context.Background(), tok, trustOrigin); err != nil {
		b.Fatal(err)
	}
	kr, kid, now := ts.verifier.keyring, peekKid(tok), time.Now() // the caller's now
	b.ReportAllocs()
	for b.Loop() {
		if !kr.verifies(kid, "", time.Hour, now) {
			b.Fatal("refused")
		}
	}
}
