package caddyoidc

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// Remote token checks (RFC 7662 introspection, Google-style tokeninfo) put
// the provider on the request path of every opaque bearer token, including
// made-up ones, so they are bounded:
//   - an active answer is cached for introspection_cache (default 60 s),
//     never past the token's exp: a token revoked at the provider is
//     refused within that time;
//   - an inactive or invalid answer is cached for rejectedTTL, in a map of
//     its own (at most maxRejected entries), so junk tokens cost one call
//     each per rejectedTTL and cannot evict verified tokens;
//   - concurrent requests with one token share one call (singleflight);
//   - at most maxRemoteCalls calls are in flight; a call that finds no slot
//     within remoteCallWait fails as provider-unavailable (503, Retry-After)
//     rather than queueing.
const (
	defaultIntrospectionCache = 60 * time.Second
	rejectedTTL               = 10 * time.Second
	maxRejected               = 10000
	maxRemoteCalls            = 32
	remoteCallWait            = time.Second
)

var errRemoteBusy = fmt.Errorf("%w: too many token checks in flight", errIdPUnavailable)

// remoteChecks is the state of the remote token checks of one handler.
type remoteChecks struct {
	flights  singleflight.Group
	slots    chan struct{}
	rejected *expiry.Map[[32]byte, error]
}

func newRemoteChecks(maxRejected, maxCalls int) *remoteChecks {
	return &remoteChecks{slots: make(chan struct{}, maxCalls), rejected: expiry.New[[32]byte, error](maxRejected)}
}

// introspectionCacheUntil is when an active answer for a token expiring at
// exp stops being used: after ttl (negative: at once), never after exp.
func introspectionCacheUntil(now, exp time.Time, ttl time.Duration) time.Time {
	if ttl < 0 {
		return now
	}
	if until := now.Add(ttl); until.Before(exp) {
		return until
	}
	return exp
}

// verifyRemote verifies an opaque token by introspection (or tokeninfo),
// with the caches, singleflight and call limit described above.
func (o *OIDC) verifyRemote(ctx context.Context, p *provider, tok string, h [32]byte) (*identity, error) {
	rc := o.rt.remote
	if err, ok := rc.rejected.Get(h, time.Now()); ok {
		count(o.rt.m.cacheHits, "bearer_rejected")
		return nil, err
	}
	ch := rc.flights.DoChan(string(h[:]), func() (any, error) {
		// A call for this token may have ended between the caller's cache
		// look-up and this flight: its answer is cached by now.
		now := time.Now()
		if id, ok := o.rt.introspected.Get(h, now); ok {
			return id, nil
		}
		if err, ok := rc.rejected.Get(h, now); ok {
			return nil, err
		}
		if !rc.acquire() {
			return nil, errRemoteBusy
		}
		defer rc.release()
		timeout := time.Duration(o.IdPTimeout)
		if timeout <= 0 {
			timeout = defaultIdPTimeout
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
		defer cancel()
		var (
			id  *identity
			exp time.Time
			err error
		)
		if o.Introspection {
			id, exp, err = o.introspect(cctx, p, tok)
		} else {
			id, exp, err = o.tokeninfo(cctx, p, tok)
		}
		now = time.Now()
		if err != nil {
			if !errors.Is(err, errIdPUnavailable) {
				rc.rejected.Put(h, err, now.Add(rejectedTTL))
			}
			return nil, err
		}
		ttl := time.Duration(o.IntrospectionCache)
		if ttl == 0 {
			ttl = defaultIntrospectionCache
		}
		if until := introspectionCacheUntil(now, exp, ttl); until.After(now) {
			o.rt.introspected.Put(h, id, until)
		}
		return id, nil
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return nil, res.Err
		}
		return res.Val.(*identity), nil
	case <-ctx.Done():
		return nil, fmt.Errorf("%w: %v", errIdPUnavailable, ctx.Err())
	}
}

// acquire takes a call slot, waiting at most remoteCallWait (the flight
// outlives its first caller, so the caller's context does not end the wait).
func (rc *remoteChecks) acquire() bool {
	select {
	case rc.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(remoteCallWait)
	defer t.Stop()
	select {
	case rc.slots <- struct{}{}:
		return true
	case <-t.C:
		return false
	}
}

func (rc *remoteChecks) release() { <-rc.slots }

// checkAccessTokenType refuses an introspection answer about a token that
// is not an access token: token_type (RFC 7662 §2.2) other than Bearer
// (or access_token), token_use (Hydra, Cognito) other than access, and
// Keycloak's typ of ID, refresh and logout tokens.
func checkAccessTokenType(claims map[string]any) error {
	if v, ok := claims["token_type"]; ok {
		s, _ := v.(string)
		switch strings.ToLower(s) {
		case "bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token":
		default:
			return fmt.Errorf("introspection: token_type %q is not an access token", idp.Printable(fmt.Sprint(v), 60))
		}
	}
	if v, ok := claims["token_use"]; ok {
		if s, _ := v.(string); s != "access_token" && s != "access" {
			return fmt.Errorf("introspection: token_use %q is not an access token", idp.Printable(fmt.Sprint(v), 60))
		}
	}
	if t, ok := claims["typ"].(string); ok && idp.NonAccessTypClaim(t) {
		return fmt.Errorf("introspection: typ %q is not an access token", idp.Printable(t, 40))
	}
	return nil
}

// introspect asks the provider about an opaque token (RFC 7662).
func (o *OIDC) introspect(ctx context.Context, p *provider, tok string) (*identity, time.Time, error) {
	claims, err := p.Introspect(ctx, o.rt.introspectionURL, tok)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("introspection: %w", err)
	}
	if active, _ := claims["active"].(bool); !active {
		return nil, time.Time{}, errors.New("token is not active")
	}
	if err := checkAccessTokenType(claims); err != nil {
		return nil, time.Time{}, err
	}
	if v, ok := claims["iss"]; ok {
		// Present, it must be the provider's (a string): a non-string iss
		// would otherwise skip the check and leave an identity without one.
		if iss, _ := v.(string); iss != p.Metadata().Issuer {
			return nil, time.Time{}, fmt.Errorf("token from another issuer (%q)", idp.Printable(fmt.Sprint(v), 100))
		}
	}
	if aud, ok := claims["aud"]; ok {
		if !idp.AudienceMatches(aud, o.rt.audience) {
			return nil, time.Time{}, fmt.Errorf("token audience %v is not this API", aud)
		}
	} else if len(o.Audience) > 0 {
		// An audience is configured: at least one must be in aud, as
		// for JWTs; a token of this client without aud is not for it.
		return nil, time.Time{}, errors.New("introspection gave no aud (audience is configured)")
	} else if cid, _ := claims["client_id"].(string); cid != o.rt.clientID {
		return nil, time.Time{}, errors.New("token issued to another client")
	}
	expF, _ := claims["exp"].(float64)
	if expF == 0 {
		return nil, time.Time{}, errors.New("introspection gave no exp")
	}
	exp := time.Unix(int64(expF), 0)
	if !time.Now().Before(exp) {
		return nil, time.Time{}, errors.New("token expired")
	}
	// sub is optional in RFC 7662: a token without one (client
	// credentials) is its client's. Present, it must be a non-empty string
	// (as for JWTs): an identity without a subject cannot be authorized,
	// revoked or logged out, and a non-string one is not the client.
	if v, ok := claims["sub"]; !ok || v == nil {
		cid, _ := claims["client_id"].(string)
		if cid == "" {
			return nil, time.Time{}, errors.New("introspection gave no sub and no client_id")
		}
		claims["sub"] = cid
	} else if sub, _ := v.(string); sub == "" {
		return nil, time.Time{}, fmt.Errorf("introspection gave an empty or non-string sub (%q)", idp.Printable(fmt.Sprint(v), 60))
	}
	if _, ok := claims["iss"]; !ok {
		claims["iss"] = p.Metadata().Issuer
	}
	id := newIdentity(claims, o.RolesClaim, nil)
	id.Source = "introspection"
	return id, exp, nil
}

// tokeninfo checks an opaque token at a Google-style tokeninfo endpoint:
// the token's aud or azp must be this client, exp in the future.
func (o *OIDC) tokeninfo(ctx context.Context, p *provider, tok string) (*identity, time.Time, error) {
	info, err := p.Tokeninfo(ctx, o.TokeninfoEndpoint, tok)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("tokeninfo: %w", err)
	}
	aud, _ := info["aud"].(string)
	azp, _ := info["azp"].(string)
	if aud != o.rt.clientID && azp != o.rt.clientID {
		return nil, time.Time{}, errors.New("token issued to another client")
	}
	var exp time.Time
	switch e := info["exp"].(type) { // Google answers numbers as strings
	case string:
		n, _ := strconv.ParseInt(e, 10, 64)
		exp = time.Unix(n, 0)
	case float64:
		exp = time.Unix(int64(e), 0)
	}
	if !time.Now().Before(exp) {
		return nil, time.Time{}, errors.New("token expired or without exp")
	}
	if s, _ := info["sub"].(string); s == "" {
		return nil, time.Time{}, errors.New("tokeninfo gave no sub")
	}
	if _, ok := info["iss"]; !ok {
		info["iss"] = p.Metadata().Issuer
	}
	id := newIdentity(info, o.RolesClaim, nil)
	id.Source = "tokeninfo"
	return id, exp, nil
}
