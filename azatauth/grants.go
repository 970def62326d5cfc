package azatauth

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// grantPrefix holds one sealed record per user (grant key).
const grantPrefix = "caddy-oidc/azat/grants/"

// Grant is what the proxy keeps for a user so that AZATs keep working:
// the provider's tokens, the user's identity, and the window of valid jti.
type Grant struct {
	// Key is <idp-iss>#<idp-sub>, the sub of the user's AZATs.
	Key          string `json:"key"`
	AccessToken  string `json:"at,omitempty"`
	TokenType    string `json:"tt,omitempty"`
	Expiry       int64  `json:"exp,omitempty"` // access token expiry, unix seconds
	RefreshToken string `json:"rt,omitempty"`
	IDToken      string `json:"it,omitempty"`
	// Claims are the identity claims captured at login.
	Claims map[string]any `json:"claims,omitempty"`
	// Tokens with MinJTI <= jti < MaxJTI are valid. Revocation burns one
	// jti (MinJTI = MaxJTI + 1, MaxJTI = MinJTI), so MinJTI grows with every
	// revocation, also when no token was minted since the previous one: a
	// recorded MinJTI (a device approval's) tells whether a revocation
	// happened since. A login keeps the window; the counters survive
	// deletion of the tokens (the record is kept as a tombstone), and a
	// record created from scratch starts at the current time in
	// microseconds, so recreating a grant never revives old tokens.
	MinJTI  uint64 `json:"min_jti"`
	MaxJTI  uint64 `json:"max_jti"`
	Updated int64  `json:"updated"`

	// memo holds what a caller derived from this (read-only) grant.
	memo atomic.Value
}

// Clone copies the grant (without memo), for changes.
func (g *Grant) Clone() *Grant {
	return &Grant{Key: g.Key, AccessToken: g.AccessToken, TokenType: g.TokenType, Expiry: g.Expiry,
		RefreshToken: g.RefreshToken, IDToken: g.IDToken, Claims: g.Claims, MinJTI: g.MinJTI, MaxJTI: g.MaxJTI,
		Updated: g.Updated}
}

// Memo returns the value compute derives from the grant, computing it once
// per grant object (grants from Load are shared and read-only).
func (g *Grant) Memo(compute func() any) any {
	if v := g.memo.Load(); v != nil {
		return v
	}
	v := compute()
	g.memo.Store(v)
	return v
}

// Usable tells whether the grant holds a refresh token.
func (g *Grant) Usable() bool { return g != nil && g.RefreshToken != "" }

// JTIValid tells whether jti is inside the window.
func (g *Grant) JTIValid(jti uint64) bool { return g != nil && jti >= g.MinJTI && jti < g.MaxJTI }

// GrantStore keeps grants in Caddy storage, sealed with AES-256-GCM bound to
// the grant key. Reads on the request path (Load) may be served from memory
// for up to the cache TTL; writes go through to storage and update the cache.
type GrantStore struct {
	st     certmagic.Storage
	sealer *seal.Sealer
	ttl    time.Duration

	cache *expiry.Map[string, *Grant]
}

// maxCachedGrants bounds the in-memory grant cache.
const maxCachedGrants = 100000

// NewGrantStore returns a store on st sealing with sealer, without cache.
func NewGrantStore(st certmagic.Storage, sealer *seal.Sealer) *GrantStore {
	return &GrantStore{st: st, sealer: sealer}
}

// WithCache makes Load serve grants read within ttl from memory. Changes
// made by this instance are seen at once; changes made by other instances
// sharing the storage (a revocation there) within ttl.
func (s *GrantStore) WithCache(ttl time.Duration) *GrantStore {
	s.ttl = ttl
	s.cache = expiry.New[string, *Grant](maxCachedGrants)
	return s
}

func (s *GrantStore) cached(key string) *Grant {
	if s.ttl <= 0 {
		return nil
	}
	g, _ := s.cache.Get(key, time.Now())
	return g
}

func (s *GrantStore) remember(key string, g *Grant) {
	if s.ttl > 0 {
		s.cache.Put(key, g, time.Now().Add(s.ttl))
	}
}

// StorageKey is the storage key of a grant (the user key is hashed).
func StorageKey(grantKey string) string {
	h := sha256.Sum256([]byte(grantKey))
	return grantPrefix + hex.EncodeToString(h[:])
}

// Load returns the grant, or (nil, nil) when there is none. The result may
// come from the cache and is shared: callers must not modify it.
func (s *GrantStore) Load(ctx context.Context, key string) (*Grant, error) {
	if g := s.cached(key); g != nil {
		return g, nil
	}
	g, err := s.load(ctx, key)
	if err == nil && g != nil {
		s.remember(key, g)
	}
	return g, err
}

// load reads the grant from storage.
func (s *GrantStore) load(ctx context.Context, key string) (*Grant, error) {
	b, err := s.st.Load(ctx, StorageKey(key))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	pt, err := s.sealer.Open(string(b), "grant:"+key)
	if err != nil {
		return nil, errors.New("grant record cannot be opened (wrong grant secret?)")
	}
	var g Grant
	if err := json.Unmarshal(pt, &g); err != nil || g.Key != key {
		return nil, errors.New("grant record is corrupt")
	}
	return &g, nil
}

// Save writes g.
func (s *GrantStore) Save(ctx context.Context, g *Grant) error {
	g.Updated = time.Now().Unix()
	b, err := json.Marshal(g)
	if err != nil {
		return err
	}
	if err := s.st.Store(ctx, StorageKey(g.Key), []byte(s.sealer.Seal(b, "grant:"+g.Key))); err != nil {
		return err
	}
	s.remember(g.Key, g) // the caller hands g over: it is read-only from now on
	return nil
}

// Update runs fn on the current grant (nil when there is none) under the
// grant's storage lock, and saves what fn returns (nothing when fn returns
// nil). Every instance sharing storage serializes on the same lock.
func (s *GrantStore) Update(ctx context.Context, key string, fn func(*Grant) (*Grant, error)) (*Grant, error) {
	lock := StorageKey(key)
	if err := s.st.Lock(ctx, lock); err != nil {
		return nil, err
	}
	defer s.st.Unlock(context.WithoutCancel(ctx), lock) //nolint:errcheck
	cur, err := s.load(ctx, key)                        // never the cache: another instance may have written
	if err != nil {
		return nil, err
	}
	next, err := fn(cur)
	if err != nil || next == nil {
		return next, err
	}
	if err := s.Save(ctx, next); err != nil {
		return nil, err
	}
	return next, nil
}

// Put stores the tokens of a login, keeping the jti window of an existing
// record (or tombstone).
func (s *GrantStore) Put(ctx context.Context, g *Grant) error {
	_, err := s.Update(ctx, g.Key, func(cur *Grant) (*Grant, error) {
		if cur != nil {
			g.MinJTI, g.MaxJTI = cur.MinJTI, cur.MaxJTI
		} else {
			// A new record starts its window at the current time in
			// microseconds: larger than any jti minted before, even if an
			// earlier record (and its counters) was deleted from storage.
			g.MinJTI = uint64(time.Now().UnixMicro())
			g.MaxJTI = g.MinJTI
		}
		return g, nil
	})
	return err
}

// NextJTI reserves the next token id of a usable grant.
func (s *GrantStore) NextJTI(ctx context.Context, key string) (uint64, *Grant, error) {
	var jti uint64
	g, err := s.Update(ctx, key, func(cur *Grant) (*Grant, error) {
		if !cur.Usable() {
			return nil, ErrNoGrant
		}
		jti = cur.MaxJTI
		cur.MaxJTI++
		return cur, nil
	})
	return jti, g, err
}

// revokeWindow moves g's window past every jti minted so far, burning one
// jti so that MinJTI always grows.
func (g *Grant) revokeWindow() {
	g.MinJTI = g.MaxJTI + 1
	g.MaxJTI = g.MinJTI
}

// Tombstone is g with its provider tokens dropped and every AZAT revoked
// (window moved as by Revoke): what Forget stores.
func (g *Grant) Tombstone() *Grant {
	t := &Grant{Key: g.Key, MinJTI: g.MinJTI, MaxJTI: g.MaxJTI}
	t.revokeWindow()
	return t
}

// Revoke invalidates every token minted so far for key, and moves MinJTI
// even when none was.
func (s *GrantStore) Revoke(ctx context.Context, key string) error {
	_, err := s.Update(ctx, key, func(cur *Grant) (*Grant, error) {
		if cur == nil {
			return nil, nil
		}
		cur.revokeWindow()
		return cur, nil
	})
	return err
}

// Forget drops the provider tokens (logout, invalid_grant) and revokes every
// AZAT, keeping a tombstone with the moved jti window.
func (s *GrantStore) Forget(ctx context.Context, key string) error {
	_, err := s.Update(ctx, key, func(cur *Grant) (*Grant, error) {
		if cur == nil {
			return nil, nil
		}
		return cur.Tombstone(), nil
	})
	return err
}

// LoadFresh reads the grant from storage, never from the cache: for checks
// that must see a revocation made by another instance at once. (nil, nil)
// when there is none; the result is the caller's.
func (s *GrantStore) LoadFresh(ctx context.Context, key string) (*Grant, error) {
	return s.load(ctx, key)
}

// ErrNoGrant means the user has no stored refresh token.
var ErrNoGrant = errors.New("no stored grant for this user")
