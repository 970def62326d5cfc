// Package azatauth mints, publishes and verifies AZATs: long-lived access
// tokens signed by this proxy (local ES256 key or AWS KMS), backed by the
// user's refresh token kept encrypted in Caddy's storage, and swapped for a
// fresh identity-provider access token on the way upstream.
package azatauth
