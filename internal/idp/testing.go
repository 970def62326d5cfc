package idp

import (
	"testing"
	"time"
)

// SetJWKSMinTTL lowers the shortest JWKS max-age honoured, for the duration
// of a test, so that a test can pass a provider's max-age in seconds.
func SetJWKSMinTTL(t testing.TB, d time.Duration) {
	old := jwksMinTTL
	jwksMinTTL = d
	t.Cleanup(func() { jwksMinTTL = old })
}
