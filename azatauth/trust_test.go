package azatauth

import (
	"context"
	"net/http"
	"net/http/httptest"
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
// trusting that JWKS, on one storage namespace (shared grants). The JWKS
// server can be made to fail (jwksDown: a status, a body that is no JWKS,
// or no answer).
type trustSites struct {
	pub, verifier *Service
	srv           *httptest.Server
	jwksDown      atomic.Value // string: "" serves the JWKS
}

func newTrustSites(tb testing.TB) *trustSites {
	tb.Helper()
	ctx := context.Background()
	st := nsstore.New(&certmagic.FileStorage{Path: tb.TempDir()}, "ns1")
	secret := strings.Repeat("g", 32)
	provision := func(c *Config, client *http.Client) *Service {
		tb.Helper()
		c.GrantSecret, c.Issuer = secret, trustOrigin
		s, err := c.Provision(ctx, zap.NewNop(), st, client)
		if err != nil {
			tb.Fatal(err)
		}
		return s
	}
	ts := &trustSites{pub: provision(&Config{}, nil)}
	ts.jwksDown.Store("")
	ts.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch ts.jwksDown.Load().(string) {
		case "":
			ts.pub.ServeJWKS(w, r)
		case "500":
			http.Error(w, "upstream unavailable", http.StatusInternalServerError)
		case "garbage":
			_, _ = w.Write([]byte("<html>captive portal</html>"))
		case "hangup":
			hj, _ := w.(http.Hijacker)
			conn, _, _ := hj.Hijack()
			_ = conn.Close()
		}
	}))
	tb.Cleanup(ts.srv.Close)
	ts.verifier = provision(&Config{Trust: ts.srv.URL, VerifyOnly: true}, ts.srv.Client())
	if err := ts.pub.Grants().Put(ctx, &Grant{Key: "op#alice", RefreshToken: "rt", AccessToken: "at",
		Expiry: time.Now().Add(time.Hour).Unix()}); err != nil {
		tb.Fatal(err)
	}
	return ts
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
