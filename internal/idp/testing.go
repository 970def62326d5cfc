package idp

import "time"

// SetJWKSMinTTL lowers the shortest JWKS max-age honoured, for the duration
// of a test (t is a testing.TB: the floor comes back at its Cleanup), so
// that a test can pass a provider's max-age in seconds. Tests only; the
// floor is a minute otherwise.
func SetJWKSMinTTL(t interface{ Cleanup(func()) }, d time.Duration) {
	old := jwksMinTTL
	jwksMinTTL = d
	t.Cleanup(func() { jwksMinTTL = old })
}
