package azatauth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/nsstore"
)

// TestTrustSiteRefusesCachedTokenOfDistrustedKey: a verify_only site that
// trusts another site's JWKS (`trust`) verified a token before its key was
// distrusted at the publisher (a token forged with the leaked key and used
// once before the distrust). After the distrust the publisher's JWKS no
// longer lists the kid and the trusting site reads it again: from then on
// the trusting site refuses that token, although its verified-token cache
// holds it (found by the red-team review: the cache kept accepting it until
// its exp, 7 days by default, because the remote keyring never marked a kid
// missing from the JWKS as refused), and refuses tokens of that key it has
// never seen.
func TestTrustSiteRefusesCachedTokenOfDistrustedKey(t *testing.T) {
	ctx := context.Background()
	st := nsstore.New(&certmagic.FileStorage{Path: t.TempDir()}, "ns1")
	const origin = "https://a.example"
	secret := strings.Repeat("g", 32)
	provision := func(c *Config, client *http.Client) *Service {
		t.Helper()
		c.GrantSecret, c.Issuer = secret, origin
		s, err := c.Provision(ctx, zap.NewNop(), st, client)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	pub := provision(&Config{}, nil)
	srv := httptest.NewServer(http.HandlerFunc(pub.ServeJWKS))
	t.Cleanup(srv.Close)
	verifier := provision(&Config{Trust: srv.URL, VerifyOnly: true}, srv.Client())

	if err := pub.Grants().Put(ctx, &Grant{Key: "op#alice", RefreshToken: "rt", AccessToken: "at",
		Expiry: time.Now().Add(time.Hour).Unix()}); err != nil {
		t.Fatal(err)
	}
	used, err := pub.Mint(ctx, "op#alice", origin) // used at the verifier before the distrust
	if err != nil {
		t.Fatal(err)
	}
	unused, err := pub.Mint(ctx, "op#alice", origin) // never seen by the verifier before
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := verifier.Verify(ctx, used.Token, origin); err != nil {
		t.Fatalf("legitimate flow: the trusting site refuses a valid AZAT: %v", err)
	}

	kid := peekKid(used.Token)
	if err := pub.keyring.Distrust(ctx, kid); err != nil {
		t.Fatal(err)
	}
	// The publisher stopped listing the kid; the trusting site reads the
	// JWKS again (what remoteKeyringRefresh does after 60 s).
	if strings.Contains(fetchBody(t, srv.URL), kid) {
		t.Fatal("the publisher still lists the distrusted kid")
	}
	if err := verifier.keyring.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, _, err := verifier.Verify(ctx, unused.Token, origin); err == nil {
		t.Fatal("a token of the distrusted key, not cached, is accepted")
	}
	if _, _, err := verifier.Verify(ctx, used.Token, origin); err == nil {
		t.Fatal("the trusting site still accepts a cached AZAT of a distrusted key (Keyring.verifies: a kid the trusted JWKS no longer lists must be refused)")
	}
}

func fetchBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var b strings.Builder
	buf := make([]byte, 4096)
	for {
		n, err := resp.Body.Read(buf)
		b.Write(buf[:n])
		if err != nil {
			break
		}
	}
	return b.String()
}
