package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

var (
	// errGrantGone: the provider says the refresh token is no longer valid
	// (invalid_grant); the session must end.
	errGrantGone = errors.New("refresh token no longer valid")
	// errIdPUnavailable: the provider could not be reached; keep the tokens.
	errIdPUnavailable = idp.ErrUnavailable
	// errNoRefreshToken: the session has nothing to refresh with.
	errNoRefreshToken = errors.New("no refresh token")
)

// The refresh coordinator. Every refresh of provider tokens goes through
// here: a session's (refresh), a grant's (refreshGrant: the refresh token
// an AZAT user's sessions and AZATs share). The same rules for both:
//   - needsRefresh decides (one predicate, on the request path of sessions
//     and AZATs alike); fresh decides again once the record is re-read;
//   - coordinate makes one provider call per record however many requests
//     ask at once (singleflight in this process, detached from the first
//     caller's cancellation, bounded in time), and the record's storage
//     lock with a re-read serializes instances sharing storage
//     (storedSessions.refresh, the grant store's Update), so a refresh
//     another instance just made is reused, not repeated;
//   - a refused refresh ends the record; an unreachable provider keeps it;
//   - a result that could not be stored (the provider may have rotated the
//     refresh token, so it is the only copy that works) is kept in memory
//     (recentResults) and stored by a later request.

// needsRefresh tells whether an access token (expiring at expiry, unix
// seconds; 0: unknown) is missing or expires within refresh_before.
func (o *OIDC) needsRefresh(token string, expiry int64, now time.Time) bool {
	return token == "" || expiry != 0 && now.Add(time.Duration(o.RefreshBefore)).Unix() >= expiry
}

// tokenUsable tells whether an access token can still be sent upstream.
func tokenUsable(token string, expiry int64, now time.Time) bool {
	return token != "" && (expiry == 0 || now.Unix() < expiry)
}

// fresh tells, once a record is re-read under its lock, whether it need not
// be refreshed: another request or instance refreshed it meanwhile (its
// token is no longer stale, the one the caller found, and is usable), or,
// unless force, it no longer needs a refresh.
func (o *OIDC) fresh(token string, expiry int64, stale string, force bool, now time.Time) bool {
	if token != stale && tokenUsable(token, expiry, now) {
		return true
	}
	return !force && !o.needsRefresh(token, expiry, now)
}

// coordinate runs fn once for all concurrent callers with the same key,
// detached from the first caller's cancellation (the others wait on it
// too) and bounded by the refresh timeout; a caller whose ctx ends stops
// waiting.
func coordinate[T any](ctx context.Context, o *OIDC, key string, fn func(context.Context) (T, error)) (T, error) {
	ch := o.rt.refreshes.DoChan(key, func() (any, error) {
		// The storage lock may be waited for, then two provider calls
		// (token endpoint, keys) made.
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Duration(o.IdPTimeout)+5*time.Second)
		defer cancel()
		return fn(ctx)
	})
	var zero T
	select {
	case res := <-ch:
		if res.Err != nil {
			return zero, res.Err
		}
		return res.Val.(T), nil
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}

// refreshKey identifies one refresh of a session: the session and the
// refresh token it would spend.
func refreshKey(s *session) string {
	h := sha256.Sum256([]byte(s.ID + "\x00" + s.RefreshToken))
	return hex.EncodeToString(h[:16])
}

// refresh returns the session with fresh tokens (force: even if its access
// token is not stale). A session backed by a grant refreshes through it.
// Requests that still carry the old cookie (sent before the browser saw
// the new Set-Cookie) get the result of the refresh just made instead of
// spending the old refresh token again, which a rotating provider would
// refuse (and which would log the user out).
func (o *OIDC) refresh(ctx context.Context, p *provider, s *session, force bool) (*session, error) {
	if s.GrantKey != "" && o.azat != nil {
		return o.sessionFromGrant(ctx, p, s, force)
	}
	if s.RefreshToken == "" {
		return nil, errNoRefreshToken
	}
	key := refreshKey(s)
	// The result of this refresh token's refresh, if one was just made (or
	// kept in memory because storage refused it). A kept result whose
	// access token has expired since is refreshed in turn, with the refresh
	// token it holds (the one in storage or in this cookie was spent), and
	// so on along a chain of such results (bounded).
	for range 16 {
		ns, ok := o.rt.recent.get(key)
		if !ok || ns == s {
			break
		}
		if ns.usable(time.Now()) && !(force && ns.AccessToken == s.AccessToken) {
			return ns, nil
		}
		if ns.AccessToken == s.AccessToken {
			break // s is that result (a non-rotating refresh token)
		}
		s, key = ns, refreshKey(ns)
	}
	if _, ok := o.rt.refused.get(key); ok {
		return nil, errGrantGone
	}
	return coordinate(ctx, o, "session\x00"+key, func(ctx context.Context) (*session, error) {
		if ns, ok := o.rt.recent.get(key); ok && ns.usable(time.Now()) && !(force && ns.AccessToken == s.AccessToken) {
			return ns, nil
		}
		ns, persisted, err := o.rt.sessions.refresh(ctx, s, func(ctx context.Context, cur *session) (*session, error) {
			if o.fresh(cur.AccessToken, cur.Expiry, s.AccessToken, force, time.Now()) {
				return cur, nil
			}
			return o.refreshAtIdP(ctx, p, cur)
		})
		switch {
		case errors.Is(err, errGrantGone):
			// A replay of the cookie does not ask the provider again. (Not
			// a revocation of the session: in cookie mode another instance
			// may have refreshed it, and its new cookie, with the same
			// session id, must keep working.)
			o.rt.refused.put(key, true, refusedTTL)
		case err != nil:
		case persisted:
			o.rt.recent.put(key, ns, recentRefreshTTL)
		default:
			o.rt.recent.put(key, ns, unstoredTTL)
		}
		return ns, err
	})
}

// refreshGrant refreshes the provider tokens of a grant: one provider call
// per grant however many requests arrive (singleflight in this process, the
// grant's storage lock across instances, and a re-read of the grant once the
// lock is held, since another instance may just have refreshed it).
//
// stale is the access token the caller found stale: once the lock is held, a
// different, unexpired token in the grant was refreshed meanwhile (perhaps
// by another instance, while this one waited for the lock) and is used as
// is, even if it too is close to its expiry.
func (o *OIDC) refreshGrant(ctx context.Context, p *provider, key, stale string, force bool) (*azatauth.Grant, error) {
	return coordinate(ctx, o, "grant\x00"+key, func(ctx context.Context) (*azatauth.Grant, error) {
		var (
			out  *azatauth.Grant
			gone bool
		)
		// A refreshed grant that could not be stored holds the live refresh
		// token (the provider may have rotated it): it wins over storage,
		// as long as storage still holds the grant it was refreshed from.
		pending, _ := o.rt.unstored.get(key)
		var stored string // the refresh token in storage
		_, err := o.azat.Grants().Update(ctx, key, func(cur *azatauth.Grant) (*azatauth.Grant, error) {
			if cur != nil {
				stored = cur.RefreshToken
			}
			if pending != nil && (!cur.Usable() || cur.RefreshToken != pending.stored) {
				// Ended meanwhile (logout, back-channel logout, invalid_grant,
				// perhaps on another instance), or replaced by a new login:
				// the grant kept in memory ends too, and never overwrites
				// the new login's.
				pending = nil
				o.rt.unstored.forget(key)
			}
			if pending != nil {
				// Tokens from memory, the jti window from storage (mints and
				// revocations may have happened since).
				merged := pending.g.Clone()
				if cur != nil {
					merged.MinJTI, merged.MaxJTI = cur.MinJTI, cur.MaxJTI
				}
				cur = merged
			}
			if !cur.Usable() {
				gone = true
				return nil, nil
			}
			if o.fresh(cur.AccessToken, cur.Expiry, stale, force, time.Now()) {
				out = cur
				if pending != nil {
					return cur, nil // store it now
				}
				return nil, nil // another request or instance refreshed it
			}
			cur = cur.Clone()
			ns, err := o.refreshAtIdP(ctx, p, grantSession(cur))
			if errors.Is(err, errGrantGone) {
				gone = true
				return cur.Tombstone(), nil // revokes every AZAT and ends pending device approvals
			}
			if err != nil {
				return nil, err
			}
			cur.AccessToken, cur.TokenType, cur.Expiry = ns.AccessToken, ns.TokenType, ns.Expiry
			cur.RefreshToken, cur.IDToken, cur.Claims = ns.RefreshToken, ns.IDToken, ns.Identity.Claims
			out = cur
			return cur, nil
		})
		if err != nil {
			if !errors.Is(err, errIdPUnavailable) {
				count(o.rt.m.storeErrors, "grant")
				if out != nil {
					// Refreshed but not stored: keep it, a later request stores it.
					o.logger.Error("storing the refreshed grant failed; kept in memory", errField(err))
					o.rt.unstored.put(key, &unstoredGrant{g: out, stored: stored}, unstoredGrantTTL)
					return out, nil
				}
				o.logger.Error("grant store failed during refresh", errField(err))
			}
			return nil, errIdPUnavailable
		}
		if pending != nil {
			o.rt.unstored.drop(key, pending)
		}
		if gone {
			return nil, errGrantGone
		}
		return out, nil
	})
}

// unstoredGrant is a refreshed grant that could not be written to storage.
type unstoredGrant struct {
	g *azatauth.Grant
	// stored is the refresh token storage held when g was made: g stands
	// for that record only while storage still holds it.
	stored string
}

// grantSession views a grant as a session for refreshAtIdP.
func grantSession(g *azatauth.Grant) *session {
	id := &identity{Claims: g.Claims}
	id.Issuer, _ = g.Claims["iss"].(string)
	id.Subject, _ = g.Claims["sub"].(string)
	return &session{ID: g.Key, AccessToken: g.AccessToken, TokenType: g.TokenType, RefreshToken: g.RefreshToken,
		IDToken: g.IDToken, Expiry: g.Expiry, Identity: id}
}

// sessionFromGrant refreshes a grant-backed session through its grant.
func (o *OIDC) sessionFromGrant(ctx context.Context, p *provider, s *session, force bool) (*session, error) {
	g, err := o.refreshGrant(ctx, p, s.GrantKey, s.AccessToken, force)
	if err != nil {
		return nil, err
	}
	ns := *s
	ns.persisted, ns.spent = false, ""
	ns.AccessToken, ns.TokenType, ns.Expiry, ns.IDToken = g.AccessToken, g.TokenType, g.Expiry, g.IDToken
	ns.Identity = newIdentity(g.Claims, o.RolesClaim, idp.UnverifiedClaims(g.AccessToken))
	return ns.labelIdentity(), nil
}

// refreshAtIdP spends s's refresh token at the token endpoint and verifies
// what comes back.
func (o *OIDC) refreshAtIdP(ctx context.Context, p *provider, s *session) (*session, error) {
	start := time.Now()
	tok, err := p.Refresh(ctx, s.RefreshToken)
	if err != nil {
		if idp.RefreshTokenDead(err) {
			o.observeRefresh(start, "invalid_grant")
			o.logger.Info("refresh refused by the provider; session ends", zap.String("sub", s.Identity.Subject))
			return nil, errGrantGone
		}
		o.observeRefresh(start, "unavailable")
		o.logger.Warn("refresh failed; keeping tokens", zap.String("sub", s.Identity.Subject), errField(err))
		return nil, errIdPUnavailable
	}
	o.observeRefresh(start, "success")
	ns := *s
	ns.persisted, ns.spent = false, s.RefreshToken
	ns.AccessToken = tok.AccessToken
	ns.TokenType = tok.TokenType
	ns.Expiry = 0
	if !tok.Expiry.IsZero() {
		ns.Expiry = tok.Expiry.Unix()
	}
	if tok.RefreshToken != "" {
		ns.RefreshToken = tok.RefreshToken
	}
	if rawID := tok.IDToken; rawID != "" {
		claims, err := p.VerifyIDToken(ctx, rawID, idp.IDTokenCheck{
			AccessToken: tok.AccessToken, PrevIss: s.Identity.Issuer, PrevSub: s.Identity.Subject,
		})
		if err != nil {
			// A provider that answers with a bad ID token is not to be trusted
			// with this session any more.
			o.logger.Warn("refreshed id token rejected; session ends", zap.String("sub", s.Identity.Subject), errField(err))
			return nil, errGrantGone
		}
		// Keep the claims that came from elsewhere (userinfo at login), not
		// those the previous ID token asserted: a claim the provider dropped
		// (a removed group) is gone.
		prev := idp.UnverifiedClaims(s.IDToken)
		for k, v := range s.Identity.Claims {
			if _, ok := claims[k]; ok {
				continue
			}
			if _, asserted := prev[k]; asserted {
				continue
			}
			claims[k] = v
		}
		ns.IDToken = rawID
		ns.Identity = newIdentity(claims, o.RolesClaim, idp.UnverifiedClaims(tok.AccessToken))
		if sid, _ := claims["sid"].(string); sid != "" {
			ns.ProviderSID = sid
		}
	} else if roles := newIdentity(s.Identity.Claims, o.RolesClaim, idp.UnverifiedClaims(tok.AccessToken)).Roles; roles != nil {
		id := s.Identity.clone()
		id.Roles = roles
		ns.Identity = id
	} else {
		ns.Identity = s.Identity.clone() // never share the old session's identity
	}
	o.logger.Debug("refreshed", zap.String("sub", s.Identity.Subject), zap.Duration("took", time.Since(start)))
	return ns.labelIdentity(), nil
}

const (
	// recentRefreshTTL: how long the result of a session's refresh serves
	// requests still carrying the old cookie.
	recentRefreshTTL = time.Minute
	// unstoredTTL keeps a refreshed session that could not be written to
	// storage (a later request stores it).
	unstoredTTL = 24 * time.Hour
	// unstoredGrantTTL keeps a refreshed grant that could not be written:
	// an AZAT may be used once a day or less, and the kept grant holds the
	// only live refresh token (at most one entry per user).
	unstoredGrantTTL = 366 * 24 * time.Hour
	// refusedTTL: how long a refresh token the provider refused is
	// refused here without asking it again (per instance).
	refusedTTL = time.Hour
)

// recentResults remembers refresh results by key until their expiry
// (expired entries go at the next put).
type recentResults[T comparable] struct {
	mu sync.Mutex
	m  map[string]recentEntry[T]
}

type recentEntry[T comparable] struct {
	v   T
	exp time.Time
}

func (c *recentResults[T]) get(key string) (T, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[key]
	if !ok || time.Now().After(e.exp) {
		var zero T
		return zero, false
	}
	return e.v, true
}

func (c *recentResults[T]) put(key string, v T, ttl time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	for k, e := range c.m {
		if now.After(e.exp) {
			delete(c.m, k)
		}
	}
	if c.m == nil {
		c.m = map[string]recentEntry[T]{}
	}
	c.m[key] = recentEntry[T]{v: v, exp: now.Add(ttl)}
}

// drop forgets key's result if it is still v (it was stored).
func (c *recentResults[T]) drop(key string, v T) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok && e.v == v {
		delete(c.m, key)
	}
}

// forget forgets key's result, whatever it is (the record ended).
func (c *recentResults[T]) forget(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, key)
}
