package azatauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/nsstore"
)

const trustOrigin = "https://a.example"

// trustSites is a publisher (mints, serves its JWKS) and a verify_only site
// trusting that JWKS (`trust`), on one storage namespace (shared grants).
// The JWKS server can be made to fail (jwksDown: "500", "garbage" for a
// 200 that is no JWKS, "hangup" for no answer) and counts its requests.
type trustSites struct {
	st            certmagic.Storage
	pub, verifier *Service
	serving       atomic.Pointer[Service] // whose JWKS the server answers (pub)
	srv           *httptest.Server
	jwksDown      atomic.Value // string: "" serves the JWKS
	fetches       atomic.Int64
}

func newTrustSites(tb testing.TB) *trustSites {
	tb.Helper()
	ctx := context.Background()
	ts := &trustSites{st: nsstore.New(&certmagic.FileStorage{Path: tb.TempDir()}, "ns1")}
	ts.pub = ts.provision(tb, &Config{}, nil)
	ts.serving.Store(ts.pub)
	ts.jwksDown.Store("")
	ts.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ts.fetches.Add(1)
		switch ts.jwksDown.Load().(string) {
		case "":
			ts.serving.Load().ServeJWKS(w, r)
		case "500":
			http.Error(w, "upstream unavailable", http.StatusInternalServerError)
		case "garbage":
			_, _ = w.Write([]byte("<html>captive portal</html>"))
		case "hangup":
			conn, _, _ := w.(http.Hijacker).Hijack()
			_ = conn.Close()
		}
	}))
	tb.Cleanup(ts.srv.Close)
	ts.verifier = ts.provision(tb, &Config{Trust: ts.srv.URL, VerifyOnly: true}, ts.srv.Client())
	if err := ts.pub.Grants().Put(ctx, &Grant{Key: "op#alice", RefreshToken: "rt", AccessToken: "at",
		Expiry: time.Now().Add(time.Hour).Unix()}); err != nil {
		tb.Fatal(err)
	}
	return ts
}

func (ts *trustSites) provision(tb testing.TB, c *Config, client *http.Client) *Service {
	tb.Helper()
	c.GrantSecret, c.Issuer = strings.Repeat("g", 32), trustOrigin
	s, err := c.Provision(context.Background(), zap.NewNop(), ts.st, client)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// mint returns a fresh AZAT of the publisher's current key.
func (ts *trustSites) mint(tb testing.TB) string {
	tb.Helper()
	m, err := ts.pub.Mint(context.Background(), "op#alice", trustOrigin)
	if err != nil {
		tb.Fatal(err)
	}
	return m.Token
}

// verifierDue makes the trusting site's next verification fetch the JWKS
// (as remoteKeyringRefresh later), with no explicit reload: what a request
// after 60 s does.
func (ts *trustSites) verifierDue() {
	kr := ts.verifier.keyring
	kr.lastReload.Store(time.Now().Add(-remoteKeyringRefresh).UnixNano())
}

// accepts verifies tok at the trusting site on both request paths (Verify,
// and VerifyOwn as the handler calls it) and returns the error (both must
// agree).
func (ts *trustSites) accepts(t *testing.T, tok string) error {
	t.Helper()
	ctx := context.Background()
	_, _, err := ts.verifier.Verify(ctx, tok, trustOrigin)
	_, _, own, err2 := ts.verifier.VerifyOwn(ctx, tok, sha256.Sum256([]byte(tok)), trustOrigin)
	if !own || (err == nil) != (err2 == nil) {
		t.Fatalf("Verify: %v; VerifyOwn: own %v, %v", err, own, err2)
	}
	return err
}

// writeKeyFile writes a new P-256 private key as PEM and returns its path.
func writeKeyFile(t *testing.T) string {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	p := filepath.Join(t.TempDir(), "key.pem")
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTrustSiteDropsKeyPublisherStopsListing: an attacker holds AZATs of a
// publisher's key that the publisher then stops trusting, one of them
// already used (cached) at a `trust` site. Distrusted with `caddy
// azat-distrust` (which writes storage only; the publisher's instance
// picks it up within keyringRefresh) or retired after a rotation, the key
// leaves the publisher's JWKS, and from the trusting site's next JWKS fetch
// (remoteKeyringRefresh, no explicit reload) its tokens are refused there,
// cached ones included; tokens of the publisher's current key keep working.
// Together the two intervals are the README's "within 70 s".
func TestTrustSiteDropsKeyPublisherStopsListing(t *testing.T) {
	if keyringRefresh+remoteKeyringRefresh > 70*time.Second {
		t.Fatalf("keyringRefresh %v + remoteKeyringRefresh %v exceed the documented 70 s", keyringRefresh, remoteKeyringRefresh)
	}
	ctx := context.Background()
	tests := []struct {
		name   string
		rotate bool // the publisher rotated to a new key before (ts.pub's is superseded)
		// drop makes the publisher stop trusting ts.pub's key.
		drop func(t *testing.T, ts *trustSites, kid string)
	}{
		{"distrusted by the operator", false, func(t *testing.T, ts *trustSites, kid string) {
			var out strings.Builder
			if err := distrust(ctx, &out, ts.st, kid); err != nil { // what `caddy azat-distrust` runs
				t.Fatal(err)
			}
		}},
		{"retired after a rotation", true, func(t *testing.T, ts *trustSites, kid string) {
			rotated := ts.serving.Load()
			setSuperseded(t, ts.st, rotated.keyring, kid, time.Now().Add(-rotated.retain()-time.Second))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := newTrustSites(t)
			current := "" // a token of the publisher's key that still verifies, if any
			if tt.rotate {
				rotated := ts.provision(t, &Config{KeyFile: writeKeyFile(t)}, nil) // a publisher instance with a new key
				m, err := rotated.Mint(ctx, "op#alice", trustOrigin)
				if err != nil {
					t.Fatal(err)
				}
				current = m.Token
				ts.serving.Store(rotated)
			}
			used, unused := ts.mint(t), ts.mint(t) // ts.pub's key
			if err := ts.accepts(t, used); err != nil {
				t.Fatalf("legitimate flow: the trusting site refuses a valid AZAT: %v", err)
			}
			kid := peekKid(used)
			tt.drop(t, ts, kid)

			// The publisher's instance reads its storage again (after
			// keyringRefresh) on the next JWKS request.
			due(ts.serving.Load().keyring)
			if strings.Contains(fetchBody(t, ts.srv.URL), kid) {
				t.Fatal("the publisher still lists the dropped kid")
			}
			ts.verifierDue()
			for name, tok := range map[string]string{"cached": used, "never seen": unused} {
				if err := ts.accepts(t, tok); !errors.Is(err, ErrUnknownKey) {
					t.Fatalf("%s token of the dropped key at the trusting site: %v, want ErrUnknownKey", name, err)
				}
			}
			// Refused for good: not cached again, and a token of the dropped
			// key still cannot make the site fetch on every request.
			fetches := ts.fetches.Load()
			for range 10 {
				if ts.accepts(t, used) == nil {
					t.Fatal("the dropped key's token accepted again")
				}
			}
			if d := ts.fetches.Load() - fetches; d != 0 {
				t.Fatalf("%d JWKS fetches for 10 requests with a dropped kid", d)
			}
			if current != "" {
				if err := ts.accepts(t, current); err != nil {
					t.Fatalf("a token of the publisher's current key is refused: %v", err)
				}
			}
		})
	}
}

// TestTrustSiteKeepsKeysWhenJWKSFetchFails: the publisher's JWKS becomes
// unreachable, or answers something that is no JWKS (an error page, a
// captive portal, a cut connection) — by accident or because an attacker
// on the path wants every AZAT refused. The trusting site keeps the keys of
// its last successful fetch, for cached and new tokens alike, and retries
// on its schedule (not on every request); once a fetch succeeds again the
// publisher's set applies, a distrust made meanwhile included. Only when no
// fetch has succeeded for remoteMaxStale does it refuse every key
// (ErrKeysStale), until one does.
func TestTrustSiteKeepsKeysWhenJWKSFetchFails(t *testing.T) {
	ctx := context.Background()
	for _, failure := range []string{"500", "garbage", "hangup"} {
		t.Run(failure, func(t *testing.T) {
			ts := newTrustSites(t)
			cached, fresh := ts.mint(t), ts.mint(t)
			if err := ts.accepts(t, cached); err != nil {
				t.Fatalf("legitimate flow: %v", err)
			}
			ts.jwksDown.Store(failure)
			ts.verifierDue()
			fetches := ts.fetches.Load()
			for name, tok := range map[string]string{"cached": cached, "never seen": fresh} {
				if err := ts.accepts(t, tok); err != nil {
					t.Fatalf("%s token refused while the JWKS fetch fails: %v", name, err)
				}
			}
			if ts.fetches.Load() == fetches {
				t.Fatal("no JWKS fetch once the refresh was due")
			}
			fetches = ts.fetches.Load() // net/http may retry a cut connection once
			for range 10 {
				if err := ts.accepts(t, cached); err != nil {
					t.Fatalf("while the JWKS fetch fails: %v", err)
				}
			}
			if d := ts.fetches.Load() - fetches; d != 0 {
				t.Fatalf("%d JWKS fetches for 10 requests after a failed one, want none before %v", d, remoteKeyringRefresh)
			}

			// No successful fetch for remoteMaxStale: every key refused.
			kr := ts.verifier.keyring
			stale := *kr.view.Load()
			stale.until = time.Now().Add(-time.Second)
			kr.view.Store(&stale)
			if err := ts.accepts(t, cached); !errors.Is(err, ErrKeysStale) {
				t.Fatalf("cached token with a stale JWKS: %v, want ErrKeysStale", err)
			}

			// The publisher is back (and distrusted the key meanwhile).
			ts.jwksDown.Store("")
			ts.verifierDue()
			if err := ts.accepts(t, cached); err != nil {
				t.Fatalf("after the JWKS is back: %v", err)
			}
			if err := ts.pub.keyring.Distrust(ctx, peekKid(cached)); err != nil {
				t.Fatal(err)
			}
			ts.jwksDown.Store(failure)
			ts.verifierDue()
			if err := ts.accepts(t, cached); err != nil {
				t.Fatalf("a failed fetch dropped the last good keys: %v", err)
			}
			ts.jwksDown.Store("")
			ts.verifierDue()
			if err := ts.accepts(t, cached); !errors.Is(err, ErrUnknownKey) {
				t.Fatalf("distrust made while the JWKS was down, after it is back: %v", err)
			}
		})
	}
}

// TestTrustSiteRefusesKidSwap: a JWKS (a compromised or spoofed trust URL)
// that lists a key under a kid that is not that key's thumbprint is not
// used: every AZAT kid names one key, so a key swapped in under a cached
// token's kid can neither verify new tokens nor keep old ones alive under
// another key.
func TestTrustSiteRefusesKidSwap(t *testing.T) {
	ts := newTrustSites(t)
	tok := ts.mint(t)
	kid := peekKid(tok)
	body := fetchBody(t, ts.srv.URL)
	other := newPub(t)
	swapped := strings.Replace(body, kid, other.KeyID(), 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, swapped)
	}))
	t.Cleanup(srv.Close)
	kr := NewRemoteKeyring(srv.URL, srv.Client())
	if err := kr.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if kr.Lookup(other.KeyID()) != nil || kr.Lookup(kid) != nil {
		t.Fatal("a key listed under another key's kid is used")
	}
	kr = NewRemoteKeyring(ts.srv.URL, ts.srv.Client())
	if err := kr.Reload(context.Background()); err != nil || kr.Lookup(kid) == nil {
		t.Fatalf("legitimate JWKS: key not used (%v)", err)
	}
}

// TestCachedKeyCheckAllocatesNothing: the check every cached verification
// makes (Keyring.verifies) allocates nothing, so the warm path stays as
// cheap as before the check existed (see BenchmarkServiceVerifyWarm*).
func TestCachedKeyCheckAllocatesNothing(t *testing.T) {
	ts := newTrustSites(t)
	tok := ts.mint(t)
	if err := ts.accepts(t, tok); err != nil {
		t.Fatal(err)
	}
	kid, now := peekKid(tok), time.Now()
	for name, kr := range map[string]*Keyring{"trust": ts.verifier.keyring, "storage": ts.pub.keyring} {
		if !kr.verifies(kid, "", time.Hour, now) || kr.verifies("unknown", "", time.Hour, now) {
			t.Fatalf("%s: verifies gives the wrong answer", name)
		}
		if n := testing.AllocsPerRun(1000, func() { kr.verifies(kid, "", time.Hour, now) }); n != 0 {
			t.Fatalf("%s: %v allocations per cached-path key check", name, n)
		}
	}
}
