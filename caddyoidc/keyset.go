package caddyoidc

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
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
// minKeyRefetch. It implements go-oidc's KeySet (used for ID tokens) and
// verifies bearer JWTs directly; either way each key is pinned to the
// algorithm family of its type.
type remoteKeySet struct {
	url    string
	client *http.Client

	mu       sync.RWMutex
	keys     []verifyKey
	loaded   bool
	inflight *keyFetch
	// lastOnDemand is when a token with an unknown kid last caused a fetch.
	lastOnDemand time.Time
}

// verifyKey is a JWKS entry ready for verification.
type verifyKey struct {
	kid string
	alg string // the key's own "alg", may be empty
	kty jwa.KeyType
	raw any // *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
}

func newRemoteKeySet(url string, client *http.Client) *remoteKeySet {
	return &remoteKeySet{url: url, client: client}
}

var (
	errUnknownKey   = errors.New("no matching key for the token's kid")
	errMalformedJWS = errors.New("malformed jws")
	errAlgorithm    = errors.New("signature algorithm not allowed")
	errSignature    = errors.New("bad signature")
)

// VerifySignature verifies the JWS with the key named by its kid and returns
// the payload (go-oidc's KeySet; go-oidc has already limited the algorithms).
func (k *remoteKeySet) VerifySignature(ctx context.Context, token string) ([]byte, error) {
	_, payload, err := k.verifyCompact(ctx, token, nil)
	return payload, err
}

// jwsHeader is the part of a JOSE header this package reads.
type jwsHeader struct {
	Alg  string `json:"alg"`
	Kid  string `json:"kid"`
	Typ  string `json:"typ"`
	Crit any    `json:"crit"`
}

// verifyCompact verifies a compact JWS: the header's alg must be in allowed
// (or, with allowed nil, any asymmetric algorithm), the key is found by kid
// (refetching the JWKS for an unknown kid) and must fit alg, then the
// signature is checked. It returns the header and the payload.
func (k *remoteKeySet) verifyCompact(ctx context.Context, token string, allowed []string) (*jwsHeader, []byte, error) {
	dot1 := strings.IndexByte(token, '.')
	if dot1 < 0 {
		return nil, nil, errMalformedJWS
	}
	dot2 := strings.IndexByte(token[dot1+1:], '.')
	if dot2 < 0 {
		return nil, nil, errMalformedJWS
	}
	dot2 += dot1 + 1
	if strings.IndexByte(token[dot2+1:], '.') >= 0 {
		return nil, nil, errMalformedJWS
	}
	hb, err := base64.RawURLEncoding.DecodeString(token[:dot1])
	if err != nil {
		return nil, nil, errMalformedJWS
	}
	var h jwsHeader
	if err := json.Unmarshal(hb, &h); err != nil || h.Crit != nil {
		return nil, nil, errMalformedJWS
	}
	if !asymmetricAlgs[h.Alg] || (allowed != nil && !slices.Contains(allowed, h.Alg)) {
		return nil, nil, errAlgorithm
	}
	raw, ok := k.lookup(h.Kid, h.Alg)
	if !ok {
		if err := k.refresh(ctx, true); err != nil {
			return nil, nil, err
		}
		if raw, ok = k.lookup(h.Kid, h.Alg); !ok {
			return nil, nil, errUnknownKey
		}
	}
	sig, err := base64.RawURLEncoding.DecodeString(token[dot2+1:])
	if err != nil {
		return nil, nil, errMalformedJWS
	}
	v, err := jws.NewVerifier(jwa.SignatureAlgorithm(h.Alg))
	if err != nil {
		return nil, nil, errAlgorithm
	}
	if err := v.Verify([]byte(token[:dot2]), sig, raw); err != nil {
		return nil, nil, errSignature
	}
	payload, err := base64.RawURLEncoding.DecodeString(token[dot1+1 : dot2])
	if err != nil {
		return nil, nil, errMalformedJWS
	}
	return &h, payload, nil
}

// lookup finds the key for kid (or, without kid, the only key usable with
// alg) whose type fits alg and whose own "alg", when set, equals alg.
func (k *remoteKeySet) lookup(kid, alg string) (any, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
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

// refresh fetches the JWKS. With onDemand (a token named an unknown kid), a
// fetch starts only if none did within minKeyRefetch; a fetch already in
// flight is always joined.
func (k *remoteKeySet) refresh(ctx context.Context, onDemand bool) error {
	k.mu.Lock()
	f := k.inflight
	if f == nil {
		if onDemand && k.loaded && !k.lastOnDemand.IsZero() && time.Since(k.lastOnDemand) < minKeyRefetch {
			k.mu.Unlock()
			return errUnknownKey
		}
		if onDemand {
			k.lastOnDemand = time.Now()
		}
		f = &keyFetch{done: make(chan struct{})}
		k.inflight = f
		go func() {
			keys, err := fetchJWKS(context.WithoutCancel(ctx), k.client, k.url)
			k.mu.Lock()
			if err == nil {
				k.keys, k.loaded = keys, true
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

// fetchJWKS fetches a JWKS and keeps its signature keys.
func fetchJWKS(ctx context.Context, client *http.Client, url string) ([]verifyKey, error) {
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
	keys := make([]verifyKey, 0, set.Len())
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
	return keys, nil
}
