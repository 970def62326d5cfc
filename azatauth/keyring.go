package azatauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// keyringPrefix holds one record per AZAT verification key ever used, so
// that every instance sharing storage verifies tokens signed by any of them
// (key rotation without redeploy) and can publish them as a JWKS.
const keyringPrefix = "caddy-oidc/azat/keys/"

// minKeyReload rate-limits reloads caused by unknown kids.
var minKeyReload = 5 * time.Second

type keyRecord struct {
	JWK   json.RawMessage `json:"jwk"`
	Added int64           `json:"added"`
}

// Keyring is the set of public keys that verify AZATs, read from Caddy
// storage (or a trusted remote JWKS), cached in memory.
type Keyring struct {
	st       certmagic.Storage // nil when trustURL is used
	trustURL string
	client   *http.Client

	mu         sync.RWMutex
	keys       map[string]jwk.Key
	added      map[string]time.Time
	lastReload time.Time
	reloading  sync.Mutex
}

// NewStorageKeyring reads keys from Caddy storage.
func NewStorageKeyring(st certmagic.Storage) *Keyring {
	return &Keyring{st: st, keys: map[string]jwk.Key{}, added: map[string]time.Time{}}
}

// NewRemoteKeyring reads keys from a JWKS URL (a site that only verifies).
func NewRemoteKeyring(url string, client *http.Client) *Keyring {
	return &Keyring{trustURL: url, client: client, keys: map[string]jwk.Key{}, added: map[string]time.Time{}}
}

// Add records a public key in storage and in memory.
func (kr *Keyring) Add(ctx context.Context, key jwk.Key) error {
	if kr.st == nil {
		return errors.New("remote keyring is read-only")
	}
	pub, err := key.PublicKey()
	if err != nil {
		return err
	}
	kid := pub.KeyID()
	kr.mu.RLock()
	_, known := kr.keys[kid]
	kr.mu.RUnlock()
	if known {
		return nil
	}
	now := time.Now()
	storageKey := keyringPrefix + kid
	if b, err := kr.st.Load(ctx, storageKey); err == nil {
		var rec keyRecord
		if json.Unmarshal(b, &rec) == nil {
			now = time.Unix(rec.Added, 0)
		}
	} else {
		raw, _ := json.Marshal(pub)
		b, _ := json.Marshal(keyRecord{JWK: raw, Added: now.Unix()})
		if err := kr.st.Store(ctx, storageKey, b); err != nil {
			return err
		}
	}
	kr.mu.Lock()
	kr.keys[kid] = pub
	kr.added[kid] = now
	kr.mu.Unlock()
	return nil
}

// Lookup returns the key for kid from memory.
func (kr *Keyring) Lookup(kid string) jwk.Key {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return kr.keys[kid]
}

// LookupOrReload returns the key for kid, reloading the keyring (at most
// every minKeyReload) when kid is unknown: another instance may have rotated.
func (kr *Keyring) LookupOrReload(ctx context.Context, kid string) jwk.Key {
	if k := kr.Lookup(kid); k != nil || kid == "" || len(kid) > 128 {
		return k
	}
	kr.reloading.Lock()
	defer kr.reloading.Unlock()
	if k := kr.Lookup(kid); k != nil {
		return k
	}
	kr.mu.RLock()
	recent := !kr.lastReload.IsZero() && time.Since(kr.lastReload) < minKeyReload
	kr.mu.RUnlock()
	if recent {
		return nil
	}
	_ = kr.Reload(ctx)
	return kr.Lookup(kid)
}

// Reload reads every key again.
func (kr *Keyring) Reload(ctx context.Context) error {
	keys, added, err := kr.load(ctx)
	kr.mu.Lock()
	defer kr.mu.Unlock()
	kr.lastReload = time.Now()
	if err != nil {
		return err
	}
	kr.keys, kr.added = keys, added
	return nil
}

func (kr *Keyring) load(ctx context.Context) (map[string]jwk.Key, map[string]time.Time, error) {
	keys, added := map[string]jwk.Key{}, map[string]time.Time{}
	if kr.trustURL != "" {
		set, err := fetchJWKS(ctx, kr.client, kr.trustURL)
		if err != nil {
			return nil, nil, err
		}
		for i := 0; i < set.Len(); i++ {
			k, _ := set.Key(i)
			if k.KeyID() != "" && allowedAlgs[k.Algorithm().String()] {
				keys[k.KeyID()] = k
				added[k.KeyID()] = time.Time{}
			}
		}
		return keys, added, nil
	}
	names, err := kr.st.List(ctx, strings.TrimSuffix(keyringPrefix, "/"), false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	for _, name := range names {
		b, err := kr.st.Load(ctx, name)
		if err != nil {
			continue
		}
		var rec keyRecord
		if json.Unmarshal(b, &rec) != nil {
			continue
		}
		k, err := jwk.ParseKey(rec.JWK)
		if err != nil || k.KeyID() == "" || !allowedAlgs[k.Algorithm().String()] {
			continue
		}
		keys[k.KeyID()] = k
		added[k.KeyID()] = time.Unix(rec.Added, 0)
	}
	return keys, added, nil
}

// JWKS returns the keys to publish: current, and every key added within
// retain (tokens it signed may still be valid), newest first.
func (kr *Keyring) JWKS(current string, retain time.Duration) jwk.Set {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	kids := make([]string, 0, len(kr.keys))
	for kid, at := range kr.added {
		if kid == current || at.IsZero() || time.Since(at) < retain {
			kids = append(kids, kid)
		}
	}
	sort.Slice(kids, func(i, j int) bool { return kr.added[kids[i]].After(kr.added[kids[j]]) })
	set := jwk.NewSet()
	for _, kid := range kids {
		_ = set.AddKey(kr.keys[kid])
	}
	return set
}

// maxJWKSBody bounds a fetched JWKS document.
const maxJWKSBody = 1 << 20

func fetchJWKS(ctx context.Context, client *http.Client, url string) (jwk.Set, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks: status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBody+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxJWKSBody {
		return nil, errors.New("jwks too large")
	}
	return jwk.Parse(b)
}
