package caddyoidc

import (
	"crypto/sha256"
	"sync"
	"time"
	"unsafe"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
)

// expirySet remembers keys until their expiry, bounded in size: used to
// refuse a replayed login callback (state used twice).
type expirySet struct {
	mu  sync.Mutex
	max int
	m   map[string]time.Time
}

func newExpirySet(max int) *expirySet { return &expirySet{max: max, m: map[string]time.Time{}} }

// add records key and reports whether it was new.
func (s *expirySet) add(key string, exp time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if e, ok := s.m[key]; ok && now.Before(e) {
		return false
	}
	if len(s.m) >= s.max {
		for k, e := range s.m {
			if now.After(e) {
				delete(s.m, k)
			}
		}
		for k := range s.m { // still full: forget arbitrary entries
			if len(s.m) < s.max {
				break
			}
			delete(s.m, k)
		}
	}
	s.m[key] = exp
	return true
}

// tokenCache maps the SHA-256 of a token to what verifying it produced,
// until the token's expiry. Bounded: when full, expired entries go first,
// then arbitrary ones.
type tokenCache struct {
	mu  sync.RWMutex
	max int
	m   map[[32]byte]cachedToken
}

type cachedToken struct {
	id  *identity
	exp time.Time
}

func newTokenCache(max int) *tokenCache {
	return &tokenCache{max: max, m: make(map[[32]byte]cachedToken)}
}

// tokenHash hashes a token without copying it (Sum256 only reads).
func tokenHash(tok string) [32]byte {
	return sha256.Sum256(unsafe.Slice(unsafe.StringData(tok), len(tok)))
}

func (c *tokenCache) get(h [32]byte, now time.Time) (*identity, bool) {
	c.mu.RLock()
	e, ok := c.m[h]
	c.mu.RUnlock()
	if !ok || !now.Before(e.exp) {
		return nil, false
	}
	return e.id, true
}

func (c *tokenCache) put(h [32]byte, id *identity, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		now := time.Now()
		for k, e := range c.m {
			if !now.Before(e.exp) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.max*3/4 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[h] = cachedToken{id: id, exp: exp}
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

// sessionCache maps a sealed session cookie value to its decoded session, so
// that repeat requests skip the AES-GCM and JSON work. Sessions in it are
// shared read-only. Bounded; an entry lives until its session's end.
type sessionCache struct {
	mu  sync.RWMutex
	max int
	m   map[string]cachedSession
}

type cachedSession struct {
	s   *session
	exp time.Time
}

func newSessionCache(max int) *sessionCache {
	return &sessionCache{max: max, m: make(map[string]cachedSession)}
}

func (c *sessionCache) get(raw string) *session {
	c.mu.RLock()
	e, ok := c.m[raw]
	c.mu.RUnlock()
	if !ok || time.Now().After(e.exp) {
		return nil
	}
	return e.s
}

func (c *sessionCache) put(raw string, s *session, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		now := time.Now()
		for k, e := range c.m {
			if now.After(e.exp) {
				delete(c.m, k)
			}
		}
		for k := range c.m {
			if len(c.m) < c.max*3/4 {
				break
			}
			delete(c.m, k)
		}
	}
	c.m[raw] = cachedSession{s: s, exp: exp}
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
