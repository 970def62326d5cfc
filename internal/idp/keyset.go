package idp

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/jws"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/jwks"
)

// minKeyRefetch is the shortest interval between two JWKS fetches triggered
// by attacker-supplied tokens (bearer tokens, back-channel logout tokens) with
// an unknown kid, per provider, so that a flood of forged kids cannot turn the
// proxy into a load generator against the provider. The first unknown kid
// after start-up always triggers a fetch, so a rotation is picked up at once.
// ID tokens from the token endpoint are not limited (see fromTokenEndpoint).
var minKeyRefetch = 5 * time.Second

// Bounds of how long a fetched JWKS is used before it is fetched again: the
// response's Cache-Control max-age (minus Age) clamped to [jwksMinTTL,
// jwksMaxTTL], jwksDefaultTTL without one. A failed scheduled refetch keeps
// the previous keys and is retried after jwksRetry, for at most jwksMaxStale
// past their expiry; then no key verifies until a fetch succeeds.
const (
	jwksMaxTTL     = 24 * time.Hour
	jwksDefaultTTL = time.Hour
	jwksRetry      = 30 * time.Second
	jwksMaxStale   = 24 * time.Hour
)

// jwksMinTTL is the shortest max-age honoured (a variable for tests).
var jwksMinTTL = time.Minute

// KeySet is the provider's JWKS, cached until its max-age passes
// (jwksTTL), then fetched again lazily by the first verification that needs
// it: a key the provider removed stops verifying at most one max-age after
// the last fetch that listed it (cached bearer results included, see
// CacheUntil). Lazily rather than on a timer: the refusal does not depend on
// a background goroutine having run (the first verification past max-age
// waits for the fetch), an idle site makes no calls to the provider, and
// there is nothing to stop on a config reload. A token naming a kid it does not know also
// causes a fetch (OpenID Connect Core 10.1.1): always for ID tokens from the
// token endpoint, at most every minKeyRefetch for other tokens. Concurrent
// fetches are one fetch. It implements go-oidc's KeySet (ID tokens, logout
// tokens) and verifies bearer JWTs directly; either way each key is pinned
// to the algorithm family of its type.
type KeySet struct {
	url    string
	client *http.Client

	mu       sync.RWMutex
	logger   *zap.Logger
	keys     []verifyKey
	loaded   bool
	fresh    time.Time // keys are used without a refetch until then
	expires  time.Time // keys are not used after (fresh + jwksMaxStale)
	inflight *keyFetch
	// lastOnDemand is when an untrusted token with an unknown kid last
	// caused a fetch.
	lastOnDemand time.Time
}

// verifyKey is a JWKS entry ready for verification.
type verifyKey struct {
	kid string
	alg string // the key's own "alg", may be empty
	kty jwa.KeyType
	raw any // *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
}

func NewKeySet(url string, client *http.Client) *KeySet {
	return &KeySet{url: url, client: client, logger: zap.NewNop()}
}

// SetLogger sets where fetch failures are logged.
func (k *KeySet) SetLogger(l *zap.Logger) {
	k.mu.Lock()
	k.logger = l
	k.mu.Unlock()
}

// tokenEndpointKey marks a context whose token came from the provider's
// token endpoint (code exchange, refresh) over TLS to the configured
// provider: a channel an attacker cannot feed, so an unknown kid there
// always allows a refetch.
type tokenEndpointKey struct{}

// fromTokenEndpoint marks ctx: the token verified with it was received from
// the token endpoint.
func fromTokenEndpoint(ctx context.Context) context.Context {
	return context.WithValue(ctx, tokenEndpointKey{}, true)
}

func isFromTokenEndpoint(ctx context.Context) bool {
	v, _ := ctx.Value(tokenEndpointKey{}).(bool)
	return v
}

// jwksTTL is how long a JWKS response may be used: Cache-Control max-age
// (the smallest if repeated; one too large to represent counts as the
// ceiling, RFC 9111 §1.2.2) minus Age, clamped to [jwksMinTTL, jwksMaxTTL];
// no-store, no-cache and an unparsable max-age count as 0 (the floor);
// jwksDefaultTTL without max-age.
func jwksTTL(h http.Header) time.Duration {
	ttl, found := jwksMaxTTL, false
	for _, v := range h.Values("Cache-Control") {
		for _, directive := range strings.Split(v, ",") {
			name, val, _ := strings.Cut(strings.TrimSpace(directive), "=")
			d := jwksMaxTTL
			switch strings.ToLower(name) {
			case "no-store", "no-cache":
				d = 0
			case "max-age":
				n, err := strconv.ParseUint(strings.Trim(val, `"`), 10, 63)
				switch {
				case err == nil:
					d = time.Duration(min(n, uint64(jwksMaxTTL/time.Second))) * time.Second
				case !errors.Is(err, strconv.ErrRange):
					d = 0
				}
			default:
				continue
			}
			ttl, found = min(ttl, d), true
		}
	}
	if !found {
		return jwksDefaultTTL
	}
	if age, err := strconv.ParseUint(h.Get("Age"), 10, 63); err == nil {
		ttl -= time.Duration(min(age, uint64(jwksMaxTTL/time.Second))) * time.Second
	}
	return min(max(ttl, jwksMinTTL), jwksMaxTTL)
}

var (
	errUnknownKey   = errors.New("no matching key for the token's kid")
	ErrMalformedJWS = jws.ErrMalformed
	errAlgorithm    = jws.ErrAlgorithm
)

// VerifySignature verifies the JWS with the key named by its kid and returns
// the payload (go-oidc's KeySet; go-oidc has already limited the algorithms).
func (k *KeySet) VerifySignature(ctx context.Context, token string) ([]byte, error) {
	_, payload, err := k.VerifyJWS(ctx, token, nil)
	return payload, err
}

// JWSHeader is the part of a JOSE header this package reads.
type JWSHeader = jws.Header

// VerifyJWS verifies a compact JWS (internal/jws): the header's alg must be
// in allowed (or, with allowed nil, any asymmetric algorithm), the key is
// found by kid (refetching the JWKS for an unknown kid) and must fit alg,
// then the signature is checked. It returns the header and the payload.
func (k *KeySet) VerifyJWS(ctx context.Context, token string, allowed []string) (*JWSHeader, []byte, error) {
	t, err := jws.Parse(token)
	if err != nil {
		return nil, nil, err
	}
	payload, err := k.verify(ctx, t, allowed)
	if err != nil {
		return nil, nil, err
	}
	return &t.Header, payload, nil
}

// verify is VerifyJWS for a token already parsed.
func (k *KeySet) verify(ctx context.Context, t *jws.Token, allowed []string) ([]byte, error) {
	h := &t.Header
	if !AsymmetricAlgs[h.Alg] || (allowed != nil && !slices.Contains(allowed, h.Alg)) {
		return nil, errAlgorithm
	}
	raw, err := k.key(ctx, h.Kid, h.Alg)
	if err != nil {
		return nil, err
	}
	return t.Verify(raw)
}

// key returns the key for kid and alg. A JWKS past its max-age is fetched
// again first (when that fails the previous keys serve, up to their hard
// expiry). An unknown kid causes a fetch: with a token from the token
// endpoint always (twice at most: a fetch already in flight may have started
// before the provider rotated), else rate-limited.
func (k *KeySet) key(ctx context.Context, kid, alg string) (any, error) {
	begin := time.Now()
	fetched := false // a fetch started since begin succeeded
	if k.stale() {
		// A failure is logged by run; the previous keys serve meanwhile.
		started, err := k.refresh(ctx, fetchStale)
		fetched = err == nil && !started.Before(begin)
	}
	if raw, ok := k.Lookup(kid, alg); ok {
		return raw, nil
	}
	if fetched {
		return nil, errUnknownKey // just fetched: no refetch would know it
	}
	if !isFromTokenEndpoint(ctx) {
		if _, err := k.refresh(ctx, fetchUntrusted); err != nil {
			return nil, err
		}
		if raw, ok := k.Lookup(kid, alg); ok {
			return raw, nil
		}
		return nil, errUnknownKey
	}
	for range 2 {
		started, err := k.refresh(ctx, fetchTrusted)
		if err != nil {
			return nil, err
		}
		if raw, ok := k.Lookup(kid, alg); ok {
			return raw, nil
		}
		if !started.Before(begin) {
			break // this fetch saw the JWKS after the token was received
		}
	}
	return nil, errUnknownKey
}

// CacheUntil bounds how long a result verified with these keys, valid until
// exp, may be cached: not past the keys' max-age, so that a token signed by
// a key the provider removed is verified again, and refused, once the JWKS
// is refetched.
func (k *KeySet) CacheUntil(exp time.Time) time.Time {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.fresh.Before(exp) {
		return k.fresh
	}
	return exp
}

// stale tells whether the cached JWKS is past its max-age (or none was
// fetched yet).
func (k *KeySet) stale() bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	return !time.Now().Before(k.fresh)
}

// Lookup finds the key for kid (or, without kid, the only key usable with
// alg) whose type fits alg and whose own "alg", when set, equals alg. Keys
// past their hard expiry (not confirmed by the provider for jwksMaxStale
// after their max-age) are not used.
func (k *KeySet) Lookup(kid, alg string) (any, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	if !k.loaded || !time.Now().Before(k.expires) {
		return nil, false
	}
	var found any
	n := 0
	for i := range k.keys {
		key := &k.keys[i]
		if kid != "" && key.kid != kid {
			continue
		}
		if !keyFitsAlg(key.kty, key.alg, alg) {
			continue
		}
		found = key.raw
		n++
	}
	if kid == "" && n != 1 {
		return nil, false
	}
	return found, found != nil
}

// keyFitsAlg pins a key to the algorithm family of its type.
func keyFitsAlg(kty jwa.KeyType, keyAlg, alg string) bool {
	if keyAlg != "" && keyAlg != alg {
		return false
	}
	switch kty {
	case jwa.RSA:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case jwa.EC:
		return strings.HasPrefix(alg, "ES")
	case jwa.OKP:
		return alg == "EdDSA"
	}
	return false
}

// fetchReason is why the JWKS is fetched.
type fetchReason int

const (
	fetchInitial   fetchReason = iota // start-up (discovery)
	fetchStale                        // the cached JWKS passed its max-age
	fetchUntrusted                    // unknown kid in an attacker-supplied token
	fetchTrusted                      // unknown kid in an ID token from the token endpoint
)

// refresh fetches the JWKS, or joins the fetch in flight (so concurrent
// callers make one fetch), and waits for it. It returns when the fetch it
// waited for started. fetchStale starts a fetch only while the keys are
// still stale; fetchUntrusted only if no untrusted fetch started within
// minKeyRefetch (else errUnknownKey).
func (k *KeySet) refresh(ctx context.Context, reason fetchReason) (time.Time, error) {
	k.mu.Lock()
	f := k.inflight
	if f == nil {
		now := time.Now()
		switch reason {
		case fetchStale:
			if now.Before(k.fresh) {
				k.mu.Unlock()
				return time.Time{}, nil
			}
		case fetchUntrusted:
			if !k.lastOnDemand.IsZero() && now.Sub(k.lastOnDemand) < minKeyRefetch {
				k.mu.Unlock()
				return time.Time{}, errUnknownKey
			}
			k.lastOnDemand = now
		}
		f = &keyFetch{done: make(chan struct{}), started: now}
		k.inflight = f
		go k.run(context.WithoutCancel(ctx), f)
	}
	k.mu.Unlock()
	select {
	case <-f.done:
		return f.started, f.err
	case <-ctx.Done():
		return f.started, ctx.Err()
	}
}

// run performs the fetch f and installs its keys. On failure the previous
// keys stay, and a scheduled refetch is retried after jwksRetry.
func (k *KeySet) run(ctx context.Context, f *keyFetch) {
	keys, ttl, err := fetchJWKS(ctx, k.client, k.url)
	now := time.Now()
	k.mu.Lock()
	if err == nil {
		k.keys, k.loaded = keys, true
		k.fresh = now.Add(ttl)
		k.expires = k.fresh.Add(jwksMaxStale)
	} else if retry := now.Add(jwksRetry); k.fresh.Before(retry) {
		k.fresh = retry
	}
	n, loaded, expires, logger := len(k.keys), k.loaded, k.expires, k.logger
	f.err = err
	k.inflight = nil
	k.mu.Unlock()
	close(f.done)
	if err == nil {
		logger.Debug("provider JWKS fetched", zap.String("jwks_uri", k.url), zap.Int("keys", len(keys)),
			zap.Duration("max_age", ttl))
	} else if loaded {
		logger.Warn("fetching the provider JWKS failed; the previous keys stay in use until they expire",
			zap.String("jwks_uri", k.url), zap.Int("keys", n), zap.Time("expires", expires),
			zap.Duration("retry_in", jwksRetry), zap.Error(err))
	} else {
		logger.Warn("fetching the provider JWKS failed; no token verifies until it succeeds",
			zap.String("jwks_uri", k.url), zap.Duration("retry_in", jwksRetry), zap.Error(err))
	}
}

type keyFetch struct {
	done    chan struct{}
	started time.Time
	err     error
}

// fetchJWKS fetches a JWKS and keeps its signature keys; ttl is how long it
// may be used (jwksTTL).
func fetchJWKS(ctx context.Context, client *http.Client, url string) (keys []verifyKey, ttl time.Duration, err error) {
	set, hdr, err := jwks.Fetch(ctx, client, url)
	if err != nil {
		return nil, 0, err
	}
	keys = make([]verifyKey, 0, set.Len())
	for i := 0; i < set.Len(); i++ {
		key, _ := set.Key(i)
		if use := key.KeyUsage(); use != "" && use != "sig" {
			continue
		}
		var raw any
		if err := key.Raw(&raw); err != nil {
			continue
		}
		alg := ""
		if a := key.Algorithm(); a != nil {
			alg = a.String()
		}
		keys = append(keys, verifyKey{kid: key.KeyID(), alg: alg, kty: key.KeyType(), raw: raw})
	}
	return keys, jwksTTL(hdr), nil
}
