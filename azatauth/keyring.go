package azatauth

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/caddy-oidc/caddy-oidc/internal/jwks"
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

// remoteMaxStale bounds how long a remote keyring keeps using the keys of
// its last successful JWKS fetch while fetches fail (retried every
// remoteKeyringRefresh): from then on no key verifies until a fetch
// succeeds, as for the provider's JWKS (caddyoidc jwksMaxStale).
var remoteMaxStale = 24 * time.Hour

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

// keyView is what the last successful read of the keyring found. It is
// never modified once published (Reload swaps in a new one), so
// verifications read it without a lock: the verified-token cache checks
// every cached token's kid against it (Keyring.verifies).
type keyView struct {
	// keys are the stored keys (storage), or exactly the keys the trusted
	// JWKS listed (remote): a kid missing here never verifies.
	keys       map[string]*keyState
	distrusted map[string]bool
	// until is when a remote keyring's keys stop verifying unless a fetch
	// succeeds before (remoteMaxStale after the fetch); zero for storage.
	until time.Time
}

var emptyView = &keyView{keys: map[string]*keyState{}, distrusted: map[string]bool{}}

// key returns the state of kid if it may verify tokens at now: listed, not
// distrusted, not stale, and current (current is the signer's kid, ""
// without one) or superseded no longer ago than retain. No lock, no
// allocation.
func (v *keyView) key(kid, current string, retain time.Duration, now time.Time) *keyState {
	ks := v.keys[kid]
	if ks == nil || v.distrusted[kid] || (!v.until.IsZero() && !now.Before(v.until)) {
		return nil
	}
	if !ks.usable(kid, current, retain, now) {
		return nil
	}
	return ks
}

// Keyring is the set of public keys that verify AZATs, read from Caddy
// storage (or a trusted remote JWKS), cached in memory and read again every
// keyringRefresh (remoteKeyringRefresh).
type Keyring struct {
	st       certmagic.Storage // nil when trustURL is used
	trustURL string
	client   *http.Client

	view atomic.Pointer[keyView] // never nil

	mu        sync.RWMutex
	own       jwk.Key // the key this instance signs with (Add), nil when none
	reloading sync.Mutex
	// lastReload is when the keyring was last read, successful or not
	// (Unix nanoseconds, 0: never): atomic, so that every verification
	// tells whether a read is due without a lock.
	lastReload atomic.Int64
}

// NewStorageKeyring reads keys from Caddy storage.
func NewStorageKeyring(st certmagic.Storage) *Keyring {
	kr := &Keyring{st: st}
	kr.view.Store(emptyView)
	return kr
}

// NewRemoteKeyring reads keys from a JWKS URL (a site that only verifies).
func NewRemoteKeyring(url string, client *http.Client) *Keyring {
	kr := &Keyring{trustURL: url, client: client}
	kr.view.Store(emptyView)
	return kr
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
	v := kr.view.Load()
	if v.distrusted[kid] {
		return nil
	}
	if ks := v.keys[kid]; ks != nil {
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
	if last := kr.lastReload.Load(); last != 0 && time.Since(time.Unix(0, last)) < minKeyReload {
		return nil
	}
	_ = kr.Reload(ctx)
	return kr.usable(kid, current, retain)
}

func (kr *Keyring) usable(kid, current string, retain time.Duration) jwk.Key {
	if ks := kr.view.Load().key(kid, current, retain, time.Now()); ks != nil {
		return ks.key
	}
	return nil
}

func (kr *Keyring) known(kid string) bool {
	v := kr.view.Load()
	return v.keys[kid] != nil || v.distrusted[kid]
}

// verifies tells whether a token verified before with the key kid is still
// to be accepted at now, as Usable would decide without reading the keyring
// again: for the verified-token cache, on every use of a cached token. A
// kid the last successful read did not find (for a remote keyring: the
// trusted JWKS no longer lists it, because the publisher distrusted or
// retired it), a distrusted or retired one is refused. Lock-free and
// allocation-free.
func (kr *Keyring) verifies(kid, current string, retain time.Duration, now time.Time) bool {
	return kr.view.Load().key(kid, current, retain, now) != nil
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
	due := func() bool { return time.Since(time.Unix(0, kr.lastReload.Load())) >= every }
	if !due() || !kr.reloading.TryLock() {
		return "", nil
	}
	defer kr.reloading.Unlock()
	if !due() {
		return "", nil
	}
	if err := kr.Reload(ctx); err != nil {
		return "", err
	}
	kr.mu.RLock()
	own := kr.own
	kr.mu.RUnlock()
	var ks *keyState
	if own != nil {
		ks = kr.view.Load().keys[own.KeyID()]
	}
	if own == nil || (ks != nil && ks.superseded.IsZero()) {
		return "", nil
	}
	return own.KeyID(), kr.Add(ctx, own)
}

// Errors wrapped with ErrUnknownKey for a kid the keyring refuses.
var (
	ErrKeyDistrusted = errors.New("key distrusted by the operator")
	ErrKeyRetired    = errors.New("key retired (superseded for longer than the token lifetime + 1h)")
	ErrKeysStale     = errors.New("trusted JWKS not fetched successfully for too long")
)

// refusal tells why the kid of token does not verify: distrusted, retired,
// the trusted JWKS stale, or unknown (ErrUnknownKey, wrapping the reason;
// for a remote keyring a kid the publisher distrusted or retired is unknown:
// its JWKS no longer lists it).
func (kr *Keyring) refusal(token, current string, retain time.Duration) error {
	kid := peekKid(token)
	v := kr.view.Load()
	ks := v.keys[kid]
	switch {
	case v.distrusted[kid]:
		return fmt.Errorf("%w: %w", ErrUnknownKey, ErrKeyDistrusted)
	case ks != nil && !v.until.IsZero() && !time.Now().Before(v.until):
		return fmt.Errorf("%w: %w", ErrUnknownKey, ErrKeysStale)
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

// Reload reads every key and the distrusted kids again (for a remote
// keyring: fetches the trusted JWKS, whose keys replace the previous ones).
// On failure the keys in memory stay (a remote keyring's until
// remoteMaxStale after its last successful fetch).
func (kr *Keyring) Reload(ctx context.Context) error {
	v, err := kr.load(ctx)
	kr.lastReload.Store(time.Now().UnixNano())
	if err != nil {
		return err
	}
	kr.view.Store(v)
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

func (kr *Keyring) load(ctx context.Context) (*keyView, error) {
	keys, distrusted := map[string]*keyState{}, map[string]bool{}
	if kr.trustURL != "" {
		// The publisher lists only keys that verify (current, or retired
		// too recently), never distrusted ones: a kid it no longer lists
		// is refused from now on, cached verifications included.
		set, _, err := jwks.Fetch(ctx, kr.client, kr.trustURL)
		if err != nil {
			return nil, err
		}
		for i := 0; i < set.Len(); i++ {
			k, _ := set.Key(i)
			if k.KeyID() != "" && allowedAlgs[k.Algorithm().String()] && kidIsThumbprint(k) {
				keys[k.KeyID()] = &keyState{key: k}
			}
		}
		return &keyView{keys: keys, distrusted: distrusted, until: time.Now().Add(remoteMaxStale)}, nil
	}
	recs, err := kr.loadRecords(ctx)
	if err != nil {
		return nil, err
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
		return nil, err
	}
	for _, name := range names {
		kid := strings.TrimPrefix(name, distrustPrefix)
		if validKid.MatchString(kid) {
			distrusted[kid] = true
		}
	}
	return &keyView{keys: keys, distrusted: distrusted}, nil
}

// kidIsThumbprint tells whether k's kid is its RFC 7638 SHA-256 thumbprint,
// as every AZAT key's is (publicJWK): a kid then names one key, so a token
// verified before under a kid still listed was verified with the listed
// key, never one swapped in under the same kid.
func kidIsThumbprint(k jwk.Key) bool {
	tp, err := k.Thumbprint(crypto.SHA256)
	return err == nil && k.KeyID() == b64.EncodeToString(tp)
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
	v := kr.view.Load()
	out := make([]KeyInfo, 0, len(v.keys))
	for kid, ks := range v.keys {
		out = append(out, KeyInfo{Kid: kid, Added: ks.added, Superseded: ks.superseded, Distrusted: v.distrusted[kid]})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Added.After(out[j].Added) })
	return out
}

// JWKS returns the keys to publish: those that verify (current, or
// superseded within retain), never distrusted ones; current first, then
// newest first.
func (kr *Keyring) JWKS(current string, retain time.Duration) jwk.Set {
	v := kr.view.Load()
	now := time.Now()
	kids := make([]string, 0, len(v.keys))
	for kid := range v.keys {
		if v.key(kid, current, retain, now) != nil {
			kids = append(kids, kid)
		}
	}
	sort.Slice(kids, func(i, j int) bool {
		if (kids[i] == current) != (kids[j] == current) {
			return kids[i] == current
		}
		return v.keys[kids[i]].added.After(v.keys[kids[j]].added)
	})
	set := jwk.NewSet()
	for _, kid := range kids {
		_ = set.AddKey(v.keys[kid].key)
	}
	return set
}
