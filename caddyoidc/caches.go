package caddyoidc

import (
	"crypto/sha256"
	"sync"
	"time"
	"unsafe"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
)

// Caches (internal/expiry maps, bounded, entries end at their expiry):
//   - usedStates: login states already used (never evicted while live), to refuse
//     replays (expiry.Map.Claim);
//   - introspected: SHA-256 of a bearer token -> its identity;
//   - sessions: a sealed session cookie value -> its decoded session, so
//     repeat requests skip the AES-GCM and JSON work (sessions in it are
//     shared read-only);
//   - stored: a stored session's id -> the session read from storage, for
//     session_cache (dropped at once on this instance when the session is
//     written or deleted).

// tokenHash hashes a token without copying it (Sum256 only reads).
func tokenHash(tok string) [32]byte {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(tok), len(tok)))
}

// recentRefreshes remembers, for a short while, the session that replaced a
// refreshed one. Requests that still carry the old cookie (sent before the
// browser saw the new Set-Cookie) reuse the result instead of spending the
// old refresh token again, which a rotating provider would refuse and which
// would log the user out.
type recentRefreshes struct {
	mu sync.Mutex
	m  map[string]recentEntry
}

type recentEntry struct {
	s   *session
	exp time.Time
}

const recentRefreshTTL = time.Minute

func newRecentRefreshes() *recentRefreshes { return &recentRefreshes{m: map[string]recentEntry{}} }

func (c *recentRefreshes) get(key string) *session {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || time.Now().After(e.exp) {
		return nil
	}
	return e.s
}

// unpersistedTTL keeps a refreshed session that could not be written to
// storage: the provider may have rotated the refresh token, so this copy is
// the only one that still works.
const unpersistedTTL = 24 * time.Hour

func (c *recentRefreshes) put(key string, s *session) { c.putFor(key, s, recentRefreshTTL) }

func (c *recentRefreshes) putFor(key string, s *session, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for k, e := range c.m {
		if now.After(e.exp) {
			delete(c.m, k)
		}
	}
	c.m[key] = recentEntry{s: s, exp: now.Add(ttl)}
}

// pendingGrants holds refreshed grants that could not be written to storage.
type pendingGrants struct {
	mu sync.Mutex
	m  map[string]*azatauth.Grant
}

func (p *pendingGrants) get(key string) *azatauth.Grant {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.m[key]
}

func (p *pendingGrants) put(key string, g *azatauth.Grant) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[string]*azatauth.Grant{}
	}
	p.m[key] = g
}

// drop forgets key's pending grant if it is still g.
func (p *pendingGrants) drop(key string, g *azatauth.Grant) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m[key] == g {
		delete(p.m, key)
	}
}

// forget drops key's pending grant, whatever it is (the grant ended).
func (p *pendingGrants) forget(key string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, key)
}
