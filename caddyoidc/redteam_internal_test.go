package caddyoidc

import (
	"context"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// TestRedteamSweepStuckBehindLiveSessions: the sweep looks at the first
// sweepBatch (1000) keys of the sessions listing, and listings are sorted,
// so the same first 1000 keys come back every run. With 1000 live stored
// sessions (a busy site) whose keys sort first, an expired session after
// them is never swept, however many runs: "a backlog is worked off over
// several runs" (sweep.go) does not hold, and stored sessions grow without
// bound (they are deleted only when their cookie comes back). The device
// code sweep keeps a cursor; this one needs one too.
func TestRedteamSweepStuckBehindLiveSessions(t *testing.T) {
	ctx := context.Background()
	o, _ := storeHandler(t)
	now := time.Now()
	store := func(id string, created time.Time) {
		s := &session{ID: id, AccessToken: "at", Created: created.Unix(), Identity: &identity{Issuer: o.Issuer, Subject: "u"}}
		if err := o.rt.stored.store(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	maxKey := ""
	for range sweepBatch {
		id := seal.RandomString(32)
		store(id, now)
		if k := sessionKey(id); k > maxKey {
			maxKey = k
		}
	}
	// An expired session whose key sorts after every live one.
	var expired string
	for expired == "" || sessionKey(expired) <= maxKey {
		expired = seal.RandomString(32)
	}
	store(expired, now.Add(-2*time.Hour))
	for range 5 {
		o.sweep(ctx, now)
	}
	if o.storage.Exists(ctx, sessionKey(expired)) {
		t.Fatal("an expired stored session behind 1000 live ones survives every sweep")
	}
}
