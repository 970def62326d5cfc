package azatauth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// keyringPrefix holds one record per AZAT verification key ever used, so
// that every instance sharing storage verifies tokens signed by any of them
// still in use (key rotation without redeploy) and can publish them as a
// JWKS.
const keyringPrefix = "caddy-oidc/azat/keys/"

// distrustPrefix holds one record per distrusted kid (DistrustRecord),
// written by `caddy azat-distrust` and never by an instance, so that no
// instance's write can undo one.
const distrustPrefix = "caddy-oidc/azat/distrusted/"

// minKeyReload rate-limits reloads caused by unknown kids.
var minKeyReload = 5 * time.Second

// keyringRefresh is how often the keyring is read again on use: the time
// within which a distrust (or a rotation) made on another instance applies.
// A keyring that trusts a remote JWKS reads it every remoteKeyringRefresh
// (the publisher's max-age).
var (
	keyringRefresh       = 10 * time.Second
	remoteKeyringRefresh = time.Duration(jwksMaxAge) * time.Second
)

// jwksMaxAge is the Cache-Control max-age (seconds) of the published JWKS.
const jwksMaxAge = 60

// RetireMargin is added to the token lifetime: a key superseded for longer
// than lifetime + RetireMargin no longer verifies and is no longer
// published (the margin covers clock skew and instances that still signed
// with it during a rolling restart).
const RetireMargin = time.Hour

// keyRecord is a stored verification key.
type keyRecord struct {
	JWK   json.RawMessage `json:"jwk"`
	Added int64           `json:"added"` // Unix seconds
	// Superseded is when another key became the signing key (Unix
	// seconds); 0 while this one is current. Records written before this
	// field existed lack it: they are taken as superseded when the next key
	// was added (the newest one as current), and rewritten so by the next
	// instance that starts signing.
	Superseded *int64 `json:"superseded,omitempty"`
}

// DistrustRecord is a distrusted kid: tokens it signed are refused at once.
type DistrustRecord struct {
	Kid string `json:"kid"`
	At  int64  `json:"at"` // Unix seconds
}

// keyState is a verification key in memory.
type keyState struct {
	key        jwk.Key
	added      time.Time
	superseded time.Time // zero: current
}

// Keyring is the set of public keys that verify AZATs, read from Caddy
// storage (or a trusted remote JWKS), cached in memory and read again every
// keyringRefresh.
type Keyring struct {
	st       certmagic.Storage // nil when trustURL is used
	trustURL string
	client   *http.Client

	mu         sync.RWMutex
	own        jwk.Key // the key this instance signs with (Add), nil when none
	keys       map[string]*keyState
	distrusted map[string]bool
	refusing   bool // some key is distrusted or superseded
	lastReload time.Time
	reloading  sync.Mutex
}

// NewStorageKeyring reads keys from Caddy storage.
func NewStorageKeyring(st certmagic.Storage) *Keyring {
	return &Keyring{st: st, keys: map[string]*keyState{}, distrusted: map[string]bool{}}
}

// NewRemoteKeyring reads keys from a JWKS URL (a site that only verifies).
func NewRemoteKeyring(url string, client *http.Client) *Keyring {
	return &Keyring{trustURL: url, client: client, keys: map[string]*keyState{}, distrusted: map[string]bool{}}
}

// validKid is what a kid must look like to name a storage record: this
// package's kids are base64url SHA-256 thumbprints.
var validKid = regexp.MustCompile(`^[A-Za-z0-9_-]{1,128}$`)

// Add records the signer's public key as the current one, in storage and in
// memory, and marks every other current key superseded now (a key that was
// superseded and comes back, a rollback, is current again).
func (kr *Keyring) Add(ctx context.Context, key jwk.Key) error {
	if kr.st == nil {
		return errors.New("remote keyring is read-only")
	}
	pub, err := key.PublicKey()
	if err != nil {
		return err
	}
	kid := pub.KeyID()
	if !validKid.MatchString(kid) {
		return fmt.Errorf("invalid kid %q", kid)
	}
	kr.mu.Lock()
	kr.own = pub
	kr.mu.Unlock()
	recs, err := kr.loadRecords(ctx)
	if err != nil {
		return err
	}
	now := time.Now()
	rec, ok := recs[kid]
	if !ok {
		raw, _ := json.Marshal(pub)
		rec = &keyRecord{JWK: raw, Added: now.Unix()}
		recs[kid] = rec
	}
	legacy := legacySuperseded(recs)
	for k, r := range recs {
		var want int64
		switch {
		case k == kid:
			want = 0
		case r.Superseded == nil:
			want = legacy[k]
			if want == 0 {
				want = now.Unix() // the newest legacy key: current until now
			}
		case *r.Superseded == 0:
			want = now.Unix()
		default:
			continue
		}
		if r.Superseded != nil && *r.Superseded == want {
			continue
		}
		r.Superseded = &want
		b, _ := json.Marshal(r)
		if err := kr.st.Store(ctx, keyringPrefix+k, b); err != nil {
			return err
		}
	}
	return kr.Reload(ctx)
}

// Lookup returns the key for kid from memory, nil when unknown or
// distrusted.
func (kr *Keyring) Lookup(kid string) jwk.Key {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	if kr.distrusted[kid] {
		return nil
	}
	if ks := kr.keys[kid]; ks != nil {
		return ks.key
	}
	return nil
}

// usable tells whether ks may verify tokens now: current (the signer's own
// key, or current in storage), or superseded no longer ago than retain.
func (ks *keyState) usable(kid, current string, retain time.Duration, now time.Time) bool {
	return kid == current || ks.superseded.IsZero() || now.Before(ks.superseded.Add(retain))
}

// Usable returns the key for kid if it may verify tokens: not distrusted,
// and current (current is the signer's kid, "" without one) or superseded
// within retain. It reads the keyring again when kid is unknown (another
// instance may have rotated; at most every minKeyReload) and when the last
// read is older than keyringRefresh (RefreshIfDue).
func (kr *Keyring) Usable(ctx context.Context, kid, current string, retain time.Duration) jwk.Key {
	kr.RefreshIfDue(ctx)
	if k := kr.usable(kid, current, retain); k != nil || kid == "" || len(kid) > 128 {
		return k
	}
	if kr.known(kid) {
		return nil // retired or distrusted: a reload changes nothing
	}
	kr.reloading.Lock()
	defer kr.reloading.Unlock()
	if k := kr.usable(kid, current, retain); k != nil {
		return k
	}
	kr.mu.RLock()
	recent := !kr.lastReload.IsZero() && time.Since(kr.lastReload) < minKeyReload
	kr.mu.RUnlock()
	if recent {
		return nil
	}
	_ = kr.Reload(ctx)
	return kr.usable(kid, current, retain)
}

func (kr *Keyring) usable(kid, current string, retain time.Duration) jwk.Key {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	ks := kr.keys[kid]
	if ks == nil || kr.distrusted[kid] || !ks.usable(kid, current, retain, time.Now()) {
		return nil
	}
	return ks.key
}

func (kr *Keyring) known(kid string) bool {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	return kr.keys[kid] != nil || kr.distrusted[kid]
}

// RefreshIfDue reads the keyring again when the last read is older than
// keyringRefresh (remoteKeyringRefresh for a remote JWKS). The request that
// finds it due waits for the read; concurrent ones go on with the keys in
// memory. When this instance's own signing key (Add) is found superseded
// (another instance started with another key: a rolling rotation, or a
// misconfiguration) or missing, it is recorded as current again, so that a
// key keeps verifying everywhere while any instance signs with it and is
// superseded when the last one stopped; its kid is returned then.
func (kr *Keyring) RefreshIfDue(ctx context.Context) (reasserted string, err error) {
	every := keyringRefresh
	if kr.st == nil {
		every = remoteKeyringRefresh
	}
	kr.mu.RLock()
	due := time.Since(kr.lastReload) >= every
	kr.mu.RUnlock()
	if !due || !kr.reloading.TryLock() {
		return "", nil
	}
	defer kr.reloading.Unlock()
	kr.mu.RLock()
	due = time.Since(kr.lastReload) >= every
	kr.mu.RUnlock()
	if !due {
		return "", nil
	}
	if err := kr.Reload(ctx); err != nil {
		return "", err
	}
	kr.mu.RLock()
	own := kr.own
	var ks *keyState
	if own != nil {
		ks = kr.keys[own.KeyID()]
	}
	kr.mu.RUnlock()
	if own == nil || (ks != nil && ks.superseded.IsZero()) {
		return "", nil
	}
	return own.KeyID(), kr.Add(ctx, own)
}

// refused tells whether a cached verification of token must be redone:
// some key is distrusted or superseded, and token's kid is one of them
// (current is the signer's kid, retain as for Usable).
func (kr *Keyring) refused(token, current string, retain time.Duration) bool {
	kr.mu.RLock()
	refusing := kr.refusing
	kr.mu.RUnlock()
	return refusing && kr.usable(peekKid(token), current, retain) == nil
}

// Errors wrapped with ErrUnknownKey for a kid the keyring knows but refuses.
var (
	ErrKeyDistrusted = errors.New("key distrusted by the operator")
	ErrKeyRetired    = errors.New("key retired (superseded for longer than the token lifetime + 1h)")
)

// refusal tells why the kid of token does not verify: distrusted, retired,
// or unknown (ErrUnknownKey, wrapping the reason).
func (kr *Keyring) refusal(token, current string, retain time.Duration) error {
	kid := peekKid(token)
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	ks := kr.keys[kid]
	switch {
	case kr.distrusted[kid]:
		return fmt.Errorf("%w: %w", ErrUnknownKey, ErrKeyDistrusted)
	case ks != nil && !ks.usable(kid, current, retain, time.Now()):
		return fmt.Errorf("%w: %w", ErrUnknownKey, ErrKeyRetired)
	}
	return ErrUnknownKey
}

// peekKid returns the kid of a compact JWS header, unverified.
func peekKid(token string) string {
	dot := strings.IndexByte(token, '.')
	if dot < 0 || dot > 1024 {
		return ""
	}
	b, err := b64.DecodeString(token[:dot])
	if err != nil {
		return ""
	}
	var h struct {
		Kid string `json:"kid"`
	}
	_ = json.Unmarshal(b, &h)
	return h.Kid
}

// Reload reads every key and the distrusted kids again. On failure the
// keys in memory stay.
func (kr *Keyring) Reload(ctx context.Context) error {
	keys, distrusted, err := kr.load(ctx)
	kr.mu.Lock()
	defer kr.mu.Unlock()
	kr.lastReload = time.Now()
	if err != nil {
		return err
	}
	kr.keys, kr.distrusted = keys, distrusted
	kr.refusing = len(distrusted) > 0
	for _, ks := range keys {
		kr.refusing = kr.refusing || !ks.superseded.IsZero()
	}
	return nil
}

// loadRecords reads every stored key record by kid.
func (kr *Keyring) loadRecords(ctx context.Context) (map[string]*keyRecord, error) {
	names, err := kr.st.List(ctx, strings.TrimSuffix(keyringPrefix, "/"), false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	recs := map[string]*keyRecord{}
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
		if err != nil || !validKid.MatchString(k.KeyID()) || !allowedAlgs[k.Algorithm().String()] {
			continue
		}
		recs[k.KeyID()] = &rec
	}
	return recs, nil
}

// legacySuperseded dates the records without a superseded field: each was
// superseded when the next key (by added) was added; the newest gets 0.
func legacySuperseded(recs map[string]*keyRecord) map[string]int64 {
	var added []int64
	for _, r := range recs {
		added = append(added, r.Added)
	}
	sort.Slice(added, func(i, j int) bool { return added[i] < added[j] })
	out := map[string]int64{}
	for kid, r := range recs {
		if r.Superseded != nil {
			continue
		}
		i := sort.Search(len(added), func(i int) bool { return added[i] > r.Added })
		if i < len(added) {
			out[kid] = added[i]
		}
	}
	return out
}

func (kr *Keyring) load(ctx context.Context) (map[string]*keyState, map[string]bool, error) {
	keys, distrusted := map[string]*keyState{}, map[string]bool{}
	if kr.trustURL != "" {
		// The publisher lists only keys that verify (current, or retired
		// too recently), never distrusted ones.
		set, err := fetchJWKS(ctx, kr.client, kr.trustURL)
		if err != nil {
			return nil, nil, err
		}
		for i := 0; i < set.Len(); i++ {
			k, _ := set.Key(i)
			if k.KeyID() != "" && allowedAlgs[k.Algorithm().String()] {
				keys[k.KeyID()] = &keyState{key: k}
			}
		}
		return keys, distrusted, nil
	}
	recs, err := kr.loadRecords(ctx)
	if err != nil {
		return nil, nil, err
	}
	legacy := legacySuperseded(recs)
	for kid, rec := range recs {
		k, _ := jwk.ParseKey(rec.JWK)
		ks := &keyState{key: k, added: time.Unix(rec.Added, 0)}
		sup := legacy[kid]
		if rec.Superseded != nil {
			sup = *rec.Superseded
		}
		if sup != 0 {
			ks.superseded = time.Unix(sup, 0)
		}
		keys[kid] = ks
	}
	names, err := kr.st.List(ctx, strings.TrimSuffix(distrustPrefix, "/"), false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	for _, name := range names {
		kid := strings.TrimPrefix(name, distrustPrefix)
		if validKid.MatchString(kid) {
			distrusted[kid] = true
		}
	}
	return keys, distrusted, nil
}

// Distrust records kid as distrusted in storage, for every instance sharing
// it (each applies it within keyringRefresh), and in memory at once. The
// kid must be a key of this keyring.
func (kr *Keyring) Distrust(ctx context.Context, kid string) error {
	if kr.st == nil {
		return errors.New("remote keyring is read-only: distrust the kid where the keys are stored")
	}
	if !validKid.MatchString(kid) {
		return fmt.Errorf("invalid kid %q", kid)
	}
	recs, err := kr.loadRecords(ctx)
	if err != nil {
		return err
	}
	if recs[kid] == nil {
		return fmt.Errorf("no AZAT key %q in this storage", kid)
	}
	b, _ := json.Marshal(DistrustRecord{Kid: kid, At: time.Now().Unix()})
	if err := kr.st.Store(ctx, distrustPrefix+kid, b); err != nil {
		return err
	}
	return kr.Reload(ctx)
}

// KeyInfo describes a stored key, for `caddy azat-keys`.
type KeyInfo struct {
	Kid        string
	Added      time.Time
	Superseded time.Time // zero: current
	Distrusted bool
}

// Keys lists the keys in memory, newest first.
func (kr *Keyring) Keys() []KeyInfo {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	out := make([]KeyInfo, 0, len(kr.keys))
	for kid, ks := range kr.keys {
		out = append(out, KeyInfo{Kid: kid, Added: ks.added, Superseded: ks.superseded, Distrusted: kr.distrusted[kid]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Added.After(out[j].Added) })
	return out
}

// JWKS returns the keys to publish: those that verify (current, or
// superseded within retain), never distrusted ones; current first, then
// newest first.
func (kr *Keyring) JWKS(current string, retain time.Duration) jwk.Set {
	kr.mu.RLock()
	defer kr.mu.RUnlock()
	now := time.Now()
	kids := make([]string, 0, len(kr.keys))
	for kid, ks := range kr.keys {
		if !kr.distrusted[kid] && ks.usable(kid, current, retain, now) {
			kids = append(kids, kid)
		}
	}
	sort.Slice(kids, func(i, j int) bool {
		if (kids[i] == current) != (kids[j] == current) {
			return kids[i] == current
		}
		return kr.keys[kids[i]].added.After(kr.keys[kids[j]].added)
	})
	set := jwk.NewSet()
	for _, kid := range kids {
		_ = set.AddKey(kr.keys[kid].key)
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
