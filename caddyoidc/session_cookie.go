package caddyoidc

import (
	"context"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// cookieSessions keeps the whole session sealed in its cookie (`session
// cookie`, the default): nothing is stored server-side but revocations.
// Ending a session (logout) stores a revocation of its id, which every
// instance sharing the storage loads within revocation_reload; back-channel
// logouts store revocations of a provider session or user (revocations.go).
type cookieSessions struct {
	sealer   *seal.Sealer
	lifetime time.Duration
	// cache maps a cookie value to its decoded session, so repeat requests
	// skip the AES-GCM and JSON work (its sessions are shared read-only).
	cache   *expiry.Map[string, *session]
	revoked *revocations
	// revoke stores a revocation (in storage, then in revoked).
	revoke func(context.Context, revocation) error
	m      *providerMetrics
}

func (cs *cookieSessions) purpose() string { return "session" }

// open decodes the session sealed in a cookie value; nil when it does not
// open or was revoked.
func (cs *cookieSessions) open(_ context.Context, raw string) (*session, error) {
	s, _ := cs.cache.Get(raw, time.Now())
	if s != nil {
		count(cs.m.cacheHits, "session")
	} else {
		pt, err := cs.sealer.Open(raw, cs.purpose())
		if err != nil {
			return nil, nil // tampered or foreign cookie: no session
		}
		if s, err = decodeSession(pt); err != nil {
			return nil, nil
		}
		cs.cache.Put(raw, s, s.until(cs.lifetime))
	}
	if cs.revoked.revoked(s) {
		return nil, nil // ended by a logout or back-channel logout
	}
	return s, nil
}

// save seals s for its cookie.
func (cs *cookieSessions) save(_ context.Context, s *session, _ bool) (string, error) {
	return cs.sealer.Seal(encodeSession(s), cs.purpose()), nil
}

// discard keeps nothing to delete: the caller expires the cookie.
func (cs *cookieSessions) discard(context.Context, *session) error { return nil }

// end revokes the session's id until it would have expired, so that a
// copy of the cookie is refused on every instance.
func (cs *cookieSessions) end(ctx context.Context, s *session) (*session, error) {
	now := time.Now()
	return s, cs.revoke(ctx, revocation{
		Kind: "id", Key: hashKey(s.ID), At: now.Unix(), AtMs: now.UnixMilli(),
		Until: s.until(cs.lifetime).Unix(),
	})
}

// refresh calls at: the new session lives in the cookie the caller writes.
func (cs *cookieSessions) refresh(ctx context.Context, s *session, at refreshFunc) (*session, bool, error) {
	ns, err := at(ctx, s)
	return ns, true, err
}

// sweep has nothing to delete (revocations expire in revocations.go).
func (cs *cookieSessions) sweep(context.Context, time.Time) int { return 0 }

// Interface guard
var _ sessionBackend = (*cookieSessions)(nil)
