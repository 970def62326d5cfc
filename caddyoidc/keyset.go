package caddyoidc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/lestrrat-go/jwx/v2/jws"
)

// minKeyRefetch is the shortest interval between two JWKS fetches triggered
// by tokens with an unknown kid, so that a flood of forged kids cannot turn
// the proxy into a load generator against the provider. The first unknown
// kid after start-up always triggers a fetch, so a rotation is picked up at
// once.
var minKeyRefetch = 5 * time.Second

// remoteKeySet is the provider's JWKS, cached and refetched when a token names
// a kid it does not know (OpenID Connect Core 10.1.1), at most every
// minKeyRefetch. It implements go-oidc's KeySet, so go-oidc's verifier keeps
// doing the claim checks while this type pins each key to its algorithm.
type remoteKeySet struct {
	url    string
	client *http.Client

	mu       sync.RWMutex
	set      jwk.Set
	inflight *keyFetch
	// lastOnDemand is when a token with an unknown kid last caused a fetch.
	lastOnDemand time.Time
}

func newRemoteKeySet(url string, client *http.Client) *remoteKeySet {
	return &remoteKeySet{url: url, client: client}
}

var errUnknownKey = errors.New("no matching key for the token's kid")

// VerifySignature verifies the JWS with the key named by its kid and returns
// the payload. Algorithms are already limited by the caller (go-oidc's
// SupportedSigningAlgs); here the key type must also match the algorithm, so
// an RSA public key can never be used as an HMAC secret.
func (k *remoteKeySet) VerifySignature(ctx context.Context, token string) ([]byte, error) {
	msg, err := jws.ParseString(token)
	if err != nil {
		return nil, fmt.Errorf("malformed jws: %w", err)
	}
	sigs := msg.Signatures()
	if len(sigs) != 1 {
		return nil, errors.New("token must have exactly one signature")
	}
	hdr := sigs[0].ProtectedHeaders()
	kid, alg := hdr.KeyID(), hdr.Algorithm()

	key, ok := k.lookup(kid, alg)
	if !ok {
		if err := k.refresh(ctx, true); err != nil {
			return nil, err
		}
		if key, ok = k.lookup(kid, alg); !ok {
			return nil, errUnknownKey
		}
	}
	return jws.Verify([]byte(token), jws.WithKey(alg, key))
}

// lookup finds the key for kid (or, without kid, the only key usable with
// alg) whose type fits alg and whose own "alg", when set, equals alg.
func (k *remoteKeySet) lookup(kid string, alg jwa.SignatureAlgorithm) (jwk.Key, bool) {
	k.mu.RLock()
	set := k.set
	k.mu.RUnlock()
	if set == nil {
		return nil, false
	}
	var found jwk.Key
	n := 0
	for i := 0; i < set.Len(); i++ {
		key, _ := set.Key(i)
		if kid != "" && key.KeyID() != kid {
			continue
		}
		if !keyFitsAlg(key, alg) {
			continue
		}
		if use := key.KeyUsage(); use != "" && use != "sig" {
			continue
		}
		found = key
		n++
	}
	if kid == "" && n != 1 {
		return nil, false
	}
	return found, found != nil
}

// keyFitsAlg pins a key to the algorithm family of its type.
func keyFitsAlg(key jwk.Key, alg jwa.SignatureAlgorithm) bool {
	if ka := key.Algorithm(); ka != nil && ka.String() != "" && ka.String() != alg.String() {
		return false
	}
	a := alg.String()
	switch key.KeyType() {
	case jwa.RSA:
		return strings.HasPrefix(a, "RS") || strings.HasPrefix(a, "PS")
	case jwa.EC:
		return strings.HasPrefix(a, "ES")
	case jwa.OKP:
		return a == "EdDSA"
	}
	return false
}

// refresh fetches the JWKS. With onDemand (a token named an unknown kid), a
// fetch starts only if none did within minKeyRefetch; a fetch already in
// flight is always joined.
func (k *remoteKeySet) refresh(ctx context.Context, onDemand bool) error {
	k.mu.Lock()
	f := k.inflight
	if f == nil {
		if onDemand && k.set != nil && !k.lastOnDemand.IsZero() && time.Since(k.lastOnDemand) < minKeyRefetch {
			k.mu.Unlock()
			return errUnknownKey
		}
		if onDemand {
			k.lastOnDemand = time.Now()
		}
		f = &keyFetch{done: make(chan struct{})}
		k.inflight = f
		go func() {
			set, err := fetchJWKS(context.WithoutCancel(ctx), k.client, k.url)
			k.mu.Lock()
			if err == nil {
				k.set = set
			}
			f.err = err
			k.inflight = nil
			k.mu.Unlock()
			close(f.done)
		}()
	}
	k.mu.Unlock()
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type keyFetch struct {
	done chan struct{}
	err  error
}

func fetchJWKS(ctx context.Context, client *http.Client, url string) (jwk.Set, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetching jwks: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading jwks: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetching jwks: status %d", resp.StatusCode)
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("parsing jwks: %w", err)
	}
	return set, nil
}
