package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Revocations end cookie sessions, which have nothing to delete
// server-side: a logout revokes its session id, a back-channel logout a
// provider session (sid) or every session of a user (sub) created before
// it. They are written to storage and every instance reloads them every
// revocationReload, loading only records it has not seen (incremental);
// each record is deleted once every session it could end has expired.

const (
	revokedPrefix    = "caddy-oidc/revoked/"
	revocationReload = 5 * time.Second
)

// revocation is one stored revocation.
type revocation struct {
	Kind string `json:"kind"` // id (a logout), sid or sub (back-channel)
	Key  string `json:"key"`  // hashKey(session id) or hashKey(iss, sid|sub)
	At   int64  `json:"at"`   // unix seconds
	// AtMs is At in milliseconds: a sub revocation ends the sessions
	// created up to that millisecond, not a login later in the same second.
	AtMs  int64 `json:"at_ms,omitempty"`
	Until int64 `json:"until"` // when every affected session has expired
}

// storageKey is one key per revocation event for a user (a later sub
// logout must not overwrite an earlier record that instances already
// loaded), one per session or provider session otherwise.
func (r revocation) storageKey() string {
	if r.Kind == "sub" && r.AtMs != 0 {
		return revokedPrefix + r.Kind + "-" + r.Key + "-" + strconv.FormatInt(r.AtMs, 10)
	}
	return revokedPrefix + r.Kind + "-" + r.Key
}

// atMs is the revocation time in milliseconds (records without at_ms: the
// end of their second).
func (r revocation) atMs() int64 {
	if r.AtMs != 0 {
		return r.AtMs
	}
	return r.At*1000 + 999
}

// subRevocation ends a user's sessions created up to atMs; it matters
// until every such session has expired.
type subRevocation struct{ atMs, until int64 }

// revocations is the in-memory copy of the stored revocations.
type revocations struct {
	mu    sync.RWMutex
	ids   map[string]int64 // key -> until
	sids  map[string]int64 // key -> until
	subs  map[string]subRevocation
	known map[string]int64 // storage key -> until: records already loaded
}

func (rv *revocations) addLocked(r revocation) {
	if rv.ids == nil {
		rv.ids, rv.sids, rv.subs, rv.known = map[string]int64{}, map[string]int64{}, map[string]subRevocation{}, map[string]int64{}
	}
	switch r.Kind {
	case "id":
		rv.ids[r.Key] = r.Until
	case "sid":
		rv.sids[r.Key] = r.Until
	case "sub":
		cur := rv.subs[r.Key]
		rv.subs[r.Key] = subRevocation{atMs: max(cur.atMs, r.atMs()), until: max(cur.until, r.Until)}
	}
	rv.known[r.storageKey()] = r.Until
}

func (rv *revocations) add(r revocation) {
	rv.mu.Lock()
	defer rv.mu.Unlock()
	rv.addLocked(r)
}

// revoked tells whether a cookie session was ended by a logout or a
// back-channel logout.
func (rv *revocations) revoked(s *session) bool {
	rv.mu.RLock()
	defer rv.mu.RUnlock()
	if len(rv.known) == 0 {
		return false
	}
	keys := s.revocationKeys
	if keys[0] == "" {
		keys = sessionRevocationKeys(s)
	}
	if _, ok := rv.ids[keys[0]]; ok {
		return true
	}
	if keys[1] != "" {
		if _, ok := rv.sids[keys[1]]; ok {
			return true
		}
	}
	sub, ok := rv.subs[keys[2]]
	return ok && s.createdMs() <= sub.atMs
}

// loadRevocations reads the revocations stored since the last call and
// deletes those that have run their course.
func (o *OIDC) loadRevocations(ctx context.Context) error {
	keys, err := o.storage.List(ctx, strings.TrimSuffix(revokedPrefix, "/"), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	rv := &o.rt.revoked
	now := time.Now().Unix()
	rv.mu.RLock()
	var fresh []string
	for _, k := range keys {
		if until, ok := rv.known[k]; ok {
			if until < now {
				_ = o.storage.Delete(ctx, k)
			}
			continue
		}
		fresh = append(fresh, k)
	}
	rv.mu.RUnlock()
	var loaded []revocation
	for _, k := range fresh {
		b, err := o.storage.Load(ctx, k)
		if err != nil {
			continue
		}
		var r revocation
		if json.Unmarshal(b, &r) != nil || r.storageKey() != k {
			continue
		}
		if r.Until < now {
			_ = o.storage.Delete(ctx, k)
			continue
		}
		loaded = append(loaded, r)
	}
	rv.mu.Lock()
	defer rv.mu.Unlock()
	for _, r := range loaded {
		rv.addLocked(r)
	}
	// Forget what has expired.
	for k, until := range rv.known {
		if until < now {
			delete(rv.known, k)
		}
	}
	for _, m := range []map[string]int64{rv.ids, rv.sids} {
		for k, until := range m {
			if until < now {
				delete(m, k)
			}
		}
	}
	for k, sub := range rv.subs {
		if sub.until < now {
			delete(rv.subs, k)
		}
	}
	return nil
}

// watchRevocations reloads revocations until ctx ends.
func (o *OIDC) watchRevocations(ctx context.Context) {
	t := time.NewTicker(revocationReload)
	defer t.Stop()
	for {
		if err := o.loadRevocations(ctx); err != nil {
			o.logger.Warn("loading session revocations failed", errField(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// storeRevocation records r in storage, then in memory.
func (o *OIDC) storeRevocation(ctx context.Context, r revocation) error {
	b, _ := json.Marshal(r)
	if err := o.storage.Store(ctx, o.key(strings.TrimPrefix(r.storageKey(), storageRoot)), b); err != nil {
		return err
	}
	o.rt.revoked.add(r)
	return nil
}
