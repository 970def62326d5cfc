package azatauth

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwk"
)

// TestKeyringRotation: a key added by one instance is found by another
// sharing storage (on an unknown kid), and both keys are published.
func TestKeyringRotation(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	a, b := NewStorageKeyring(st), NewStorageKeyring(st)
	k1, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	s1 := mustLocal(t, k1)
	p1, _ := s1.PublicKey()
	if err := a.Add(ctx, p1); err != nil {
		t.Fatal(err)
	}
	if b.Usable(ctx, p1.KeyID(), "", time.Hour) == nil {
		t.Fatal("instance b does not see instance a's key")
	}
	k2, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p2, _ := mustLocal(t, k2).PublicKey()
	if err := a.Add(ctx, p2); err != nil {
		t.Fatal(err)
	}
	set := a.JWKS(p2.KeyID(), time.Hour)
	if set.Len() != 2 {
		t.Fatalf("published %d keys, want 2", set.Len())
	}
	first, _ := set.Key(0)
	if first.KeyID() != p2.KeyID() {
		t.Fatal("current key not first")
	}
	for i := 0; i < set.Len(); i++ {
		k, _ := set.Key(i)
		if _, isPriv := k.(jwk.ECDSAPrivateKey); isPriv {
			t.Fatal("private key published")
		}
	}
	// A verify-only site trusting a served JWKS finds both keys.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(set)
	}))
	defer srv.Close()
	remote := NewRemoteKeyring(srv.URL, http.DefaultClient)
	if remote.Usable(ctx, p1.KeyID(), "", time.Hour) == nil || remote.Lookup(p2.KeyID()) == nil {
		t.Fatal("remote keyring misses keys")
	}
	// Unknown kids reload at most every minKeyReload.
	if remote.Usable(ctx, "nope", "", time.Hour) != nil {
		t.Fatal("found unknown kid")
	}
}

// setSuperseded rewrites kid's stored record as superseded at t (as if t
// were that long ago), then reloads kr.
func setSuperseded(t *testing.T, st certmagic.Storage, kr *Keyring, kid string, at time.Time) {
	t.Helper()
	ctx := context.Background()
	b, err := st.Load(ctx, keyringPrefix+kid)
	if err != nil {
		t.Fatal(err)
	}
	var rec keyRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	sec := at.Unix()
	rec.Superseded = &sec
	b, _ = json.Marshal(rec)
	if err := st.Store(ctx, keyringPrefix+kid, b); err != nil {
		t.Fatal(err)
	}
	if err := kr.Reload(ctx); err != nil {
		t.Fatal(err)
	}
}

func newPub(t *testing.T) jwk.Key {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p, err := mustLocal(t, k).PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestKeyRetirement: an old signing key (say, leaked from a backup) stops
// verifying, and is no longer published, once it has been superseded for
// longer than the token lifetime + RetireMargin; within that time it still
// verifies (tokens it signed may be valid); the current key always does;
// a rollback to an old key makes it current again.
func TestKeyRetirement(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	a := NewStorageKeyring(st)
	old, cur := newPub(t), newPub(t)
	if err := a.Add(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := a.Add(ctx, cur); err != nil {
		t.Fatal(err)
	}
	const lifetime = 7 * 24 * time.Hour
	retain := lifetime + RetireMargin
	for _, k := range a.Keys() {
		if (k.Kid == cur.KeyID()) != k.Superseded.IsZero() {
			t.Fatalf("key %s: superseded %v", k.Kid, k.Superseded)
		}
	}
	published := func(kr *Keyring, kid string) bool {
		set := kr.JWKS(cur.KeyID(), retain)
		_, ok := set.LookupKeyID(kid)
		return ok
	}
	// Superseded a moment ago: still verifies on an instance that never
	// signed with it (another instance, a verify-only site).
	b := NewStorageKeyring(st)
	if b.Usable(ctx, old.KeyID(), "", retain) == nil || !published(b, old.KeyID()) {
		t.Fatal("a just superseded key does not verify")
	}
	tests := []struct {
		name   string
		ago    time.Duration
		usable bool
	}{
		{"superseded lifetime ago", lifetime, true},
		{"superseded lifetime + margin - 1m ago", retain - time.Minute, true},
		{"superseded lifetime + margin + 1s ago", retain + time.Second, false},
		{"superseded a year ago", 365 * 24 * time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			setSuperseded(t, st, b, old.KeyID(), time.Now().Add(-tt.ago))
			if got := b.Usable(ctx, old.KeyID(), "", retain) != nil; got != tt.usable {
				t.Fatalf("old key usable = %v, want %v", got, tt.usable)
			}
			if published(b, old.KeyID()) != tt.usable {
				t.Fatalf("old key published = %v, want %v", !tt.usable, tt.usable)
			}
			if b.Usable(ctx, cur.KeyID(), "", retain) == nil || !published(b, cur.KeyID()) {
				t.Fatal("the current key does not verify")
			}
			if errors.Is(b.refusal(signedBy(old), "", retain), ErrKeyRetired) == tt.usable {
				t.Fatalf("refusal: %v", b.refusal(signedBy(old), "", retain))
			}
		})
	}
	// The signer's own key verifies on its instance whatever storage says
	// (another instance started with a different key).
	if b.Usable(ctx, old.KeyID(), old.KeyID(), retain) == nil {
		t.Fatal("the signer's own key refused")
	}
	// Rollback: an instance starts signing with the old key again.
	if err := a.Add(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := b.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if b.Usable(ctx, old.KeyID(), "", retain) == nil || b.Usable(ctx, cur.KeyID(), "", retain) == nil {
		t.Fatal("after a rollback the old key is current and the other superseded just now: both verify")
	}
}

// signedBy is a token header naming key's kid (for refusal, which reads only
// the kid).
func signedBy(key jwk.Key) string {
	h, _ := json.Marshal(map[string]string{"alg": "ES256", "kid": key.KeyID(), "typ": TokenType})
	return b64.EncodeToString(h) + ".e30.sig"
}

// TestLegacyKeyRecords: records stored before the superseded field existed
// are dated by the next key's addition: a key replaced long ago stops
// verifying at once after the upgrade, the previous one still verifies, the
// newest is current; the first instance that starts signing rewrites them
// all with the field.
func TestLegacyKeyRecords(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	day := 24 * time.Hour
	retain := 7*day + RetireMargin
	keys := []jwk.Key{newPub(t), newPub(t), newPub(t)}
	for i, ago := range []time.Duration{30 * day, 10 * day, day} {
		raw, _ := json.Marshal(keys[i])
		b, _ := json.Marshal(map[string]any{"jwk": json.RawMessage(raw), "added": time.Now().Add(-ago).Unix()})
		if err := st.Store(ctx, keyringPrefix+keys[i].KeyID(), b); err != nil {
			t.Fatal(err)
		}
	}
	kr := NewStorageKeyring(st)
	if err := kr.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	want := []bool{false, true, true} // replaced 10 days ago; 1 day ago; current
	for i, k := range keys {
		if got := kr.Usable(ctx, k.KeyID(), "", retain) != nil; got != want[i] {
			t.Fatalf("legacy key %d usable = %v, want %v", i, got, want[i])
		}
	}
	next := newPub(t)
	if err := kr.Add(ctx, next); err != nil {
		t.Fatal(err)
	}
	for i, k := range append(keys, next) {
		b, _ := st.Load(ctx, keyringPrefix+k.KeyID())
		var rec keyRecord
		_ = json.Unmarshal(b, &rec)
		if rec.Superseded == nil || (*rec.Superseded == 0) != (i == 3) {
			t.Fatalf("key %d after the upgrade: %s", i, b)
		}
	}
	want = []bool{false, true, true, true} // the former current one: superseded now
	for i, k := range append(keys, next) {
		if got := kr.Usable(ctx, k.KeyID(), "", retain) != nil; got != want[i] {
			t.Fatalf("key %d usable = %v, want %v", i, got, want[i])
		}
	}
}

// due makes kr's next RefreshIfDue read storage (as keyringRefresh later).
func due(kr *Keyring) {
	kr.lastReload.Store(time.Now().Add(-keyringRefresh).UnixNano())
}

// TestSigningKeyReasserted: during a rolling rotation, an instance still
// signing with the old key finds it superseded and records it as current
// again, so its tokens keep verifying on every instance; once it stops,
// the old key stays superseded (and retires after lifetime + 1h).
func TestSigningKeyReasserted(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	oldInst, newInst, verifier := NewStorageKeyring(st), NewStorageKeyring(st), NewStorageKeyring(st)
	old, cur := newPub(t), newPub(t)
	if err := oldInst.Add(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := newInst.Add(ctx, cur); err != nil { // the new key starts: old superseded
		t.Fatal(err)
	}
	state := func(kid string) time.Time {
		if err := verifier.Reload(ctx); err != nil {
			t.Fatal(err)
		}
		for _, k := range verifier.Keys() {
			if k.Kid == kid {
				return k.Superseded
			}
		}
		t.Fatalf("no key %s", kid)
		return time.Time{}
	}
	if state(old.KeyID()).IsZero() {
		t.Fatal("old key not superseded by the new one")
	}
	due(oldInst)
	if kid, err := oldInst.RefreshIfDue(ctx); err != nil || kid != old.KeyID() {
		t.Fatalf("old instance did not reassert its key: %q %v", kid, err)
	}
	if !state(old.KeyID()).IsZero() || state(cur.KeyID()).IsZero() {
		t.Fatal("after the reassertion the old key should be current, the new one superseded")
	}
	due(newInst)
	if kid, _ := newInst.RefreshIfDue(ctx); kid != cur.KeyID() {
		t.Fatalf("new instance did not reassert: %q", kid)
	}
	// The old instance is gone: nobody reasserts the old key any more.
	due(newInst)
	if kid, _ := newInst.RefreshIfDue(ctx); kid != "" {
		t.Fatalf("reasserted a current key: %q", kid)
	}
	if state(old.KeyID()).IsZero() || !state(cur.KeyID()).IsZero() {
		t.Fatal("after the rollout the old key should stay superseded")
	}
	// Not due: no storage read.
	if kid, err := newInst.RefreshIfDue(ctx); kid != "" || err != nil {
		t.Fatal("refreshed before keyringRefresh")
	}
}
