package azatauth

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// TestVerifiedCacheIsBoundToOrigin: with the default issuer (the request's
// origin), a token verified for one origin of a site is not accepted from
// the verified-token cache for another origin, and Recognizes routes it only
// where its issuer is the site's.
func TestVerifiedCacheIsBoundToOrigin(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	c := &Config{GrantSecret: strings.Repeat("g", 32)} // issuer: the request's origin
	s, err := c.Provision(context.Background(), zap.NewNop(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Grants().Put(ctx, &Grant{Key: "op#alice", RefreshToken: "rt", AccessToken: "at",
		Expiry: time.Now().Add(time.Hour).Unix()}); err != nil {
		t.Fatal(err)
	}
	const a, b = "https://a.example", "https://b.example"
	m, err := s.Mint(ctx, "op#alice", a)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		origin     string
		recognized bool
		err        error
	}{
		{a, true, nil},         // cold: signature, then cached
		{a, true, nil},         // warm
		{b, false, ErrIssuer},  // cached for a, not for b
		{a, true, nil},         // still fine for a
		{"", false, ErrIssuer}, // no origin
		{a + ".", false, ErrIssuer},
	}
	for i, tt := range tests {
		if got := s.Recognizes(m.Token, tt.origin); got != tt.recognized {
			t.Errorf("%d: Recognizes(%q) = %v", i, tt.origin, got)
		}
		_, _, err := s.Verify(ctx, m.Token, tt.origin)
		if !errors.Is(err, tt.err) {
			t.Errorf("%d: Verify at %q: %v, want %v", i, tt.origin, err, tt.err)
		}
		// VerifyOwn: verified (with Verify's outcome) exactly when recognized.
		c, _, own, err := s.VerifyOwn(ctx, m.Token, sha256.Sum256([]byte(m.Token)), tt.origin)
		switch {
		case own != tt.recognized:
			t.Errorf("%d: VerifyOwn at %q: own %v", i, tt.origin, own)
		case own && !errors.Is(err, tt.err), !own && (err != nil || c != nil):
			t.Errorf("%d: VerifyOwn at %q: %v, %v", i, tt.origin, c, err)
		}
	}
	// A token that is not an AZAT of this site is not recognized, cached or not.
	for _, tok := range []string{"", "x", "a.b.c", strings.Repeat("a", MaxTokenSize+1)} {
		if s.Recognizes(tok, a) {
			t.Errorf("Recognizes(%.20q)", tok)
		}
		if _, _, own, err := s.VerifyOwn(ctx, tok, sha256.Sum256([]byte(tok)), a); own || err != nil {
			t.Errorf("VerifyOwn(%.20q) = %v, %v", tok, own, err)
		}
	}
}
