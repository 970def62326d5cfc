package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// storedSessions keeps sessions in Caddy storage (`session store`): the
// cookie holds the sealed session id, the record "<until>.<sealed session>"
// the session. Every stored session is indexed by its provider session (sid)
// and user (sub), so that a back-channel logout finds it. A refresh writes
// and a logout deletes a record under the session's storage lock, so a
// refresh in flight never stores again a session that was ended, on any
// instance (a new login writes its new record, and expired records are
// deleted, without it: no refresh can race them).
//
// A handler in cookie mode has one too: a back-channel logout ends the
// stored sessions of its namespace whatever the mode (handlers of one
// namespace may differ in it during a rolling change of `session`).
type storedSessions struct {
	storage  certmagic.Storage // the handler's namespace
	sealer   *seal.Sealer
	lifetime time.Duration
	// cacheTTL is session_cache: how long a record read is used from
	// memory; cache holds the records (dropped at once on this instance
	// when one is written or deleted).
	cacheTTL time.Duration
	cache    *expiry.Map[string, *session]
	// revoked are the back-channel logouts (and logouts of cookie
	// sessions) every instance loads: checked too, so that a session a
	// back-channel logout missed in the index (stored by a login that
	// raced it) ends all the same.
	revoked *revocations
	m       *providerMetrics
	logger  *zap.Logger
	// sweeps say where each sweep goes on next run.
	sweeps struct{ records, sids, subs listCursor }
	// retrying: ids whose kept refresh a request of this instance is
	// writing now (the others do not queue on the storage lock).
	retrying sync.Map
}

const (
	sessionsPrefix = "caddy-oidc/sessions"
	indexPrefix    = "caddy-oidc/index/"
)

// sessionKey is the storage key of a stored session. The id is hashed so the
// key (visible in storage listings and logs) is not the secret itself.
func sessionKey(id string) string {
	h := sha256.Sum256([]byte(id))
	return sessionsPrefix + "/" + hex.EncodeToString(h[:])
}

func sidIndex(iss, sid string) string { return indexPrefix + "sid/" + hashKey(iss, sid) }
func subIndex(iss, sub string) string { return indexPrefix + "sub/" + hashKey(iss, sub) }

func (st *storedSessions) purpose() string { return "session-id" }

// open returns the stored session the sealed id in a cookie names, from
// memory within session_cache.
func (st *storedSessions) open(ctx context.Context, raw string) (*session, error) {
	pt, err := st.sealer.Open(raw, st.purpose())
	if err != nil {
		return nil, nil // tampered or foreign cookie: no session
	}
	id := string(pt)
	s, ok := st.cache.Get(id, time.Now())
	if ok {
		count(st.m.cacheHits, "stored_session")
	} else {
		if s, err = st.load(ctx, id); err != nil || s == nil {
			return nil, err
		}
		st.remember(s)
	}
	if st.revoked.revoked(s) {
		return nil, nil
	}
	return s, nil
}

// save writes s's record and returns the sealed id for its cookie. A new
// session is indexed first: a stored session a back-channel logout cannot
// find is never created (a stray entry of a failed login is swept). A
// refreshed one is written only over a record that still exists
// (errSessionEnded otherwise), unless the refresh stored it already
// (persisted): then every request that shares the refresh's result would
// take the record's lock to write it again.
func (st *storedSessions) save(ctx context.Context, s *session, created bool) (string, error) {
	ctx = context.WithoutCancel(ctx)
	if created {
		if err := st.index(ctx, s); err != nil {
			return "", err
		}
		if err := st.store(ctx, s); err != nil {
			return "", err
		}
	} else if !s.persisted {
		if _, busy := st.retrying.LoadOrStore(s.ID, true); !busy {
			err := st.update(ctx, s)
			st.retrying.Delete(s.ID)
			if err != nil {
				return "", err
			}
		}
	}
	return st.sealer.Seal([]byte(s.ID), st.purpose()), nil
}

// discard deletes s's record.
func (st *storedSessions) discard(ctx context.Context, s *session) error {
	err := st.delete(context.WithoutCancel(ctx), s.ID)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	return err
}

// end deletes the record under the session's lock, which ends every copy of
// the cookie on every instance (within session_cache), and returns the
// record as it was (s when it was gone already).
func (st *storedSessions) end(ctx context.Context, s *session) (*session, error) {
	ctx = context.WithoutCancel(ctx)
	last := s
	err := st.locked(ctx, s.ID, func() error {
		if cur, err := st.load(ctx, s.ID); err == nil && cur != nil {
			last = cur
		}
		return st.deleteLocked(ctx, s.ID)
	})
	if errors.Is(err, fs.ErrNotExist) {
		err = nil
	}
	return last, err
}

// refresh runs at under the session's storage lock on the record as stored
// now: a refresh another instance just made is reused, a session ended
// meanwhile is not refreshed, and one refused by the provider is deleted.
// persisted tells whether the result is in storage: when storing fails the
// provider may have rotated the refresh token, so the caller keeps the
// result in memory until a later request stores it.
func (st *storedSessions) refresh(ctx context.Context, s *session, at refreshFunc) (ns *session, persisted bool, err error) {
	var lockErr *storeLockError
	if errors.As(st.locked(ctx, s.ID, func() error {
		ns, persisted, err = st.refreshLocked(ctx, s, at)
		return nil
	}), &lockErr) {
		count(st.m.storeErrors, "lock")
		st.logger.Error("session store lock failed", errField(lockErr.err))
		return nil, false, errIdPUnavailable
	}
	return ns, persisted, err
}

// refreshLocked is refresh for a caller holding the session's lock.
func (st *storedSessions) refreshLocked(ctx context.Context, s *session, at refreshFunc) (*session, bool, error) {
	cur, err := st.load(ctx, s.ID)
	if err != nil {
		count(st.m.storeErrors, "load")
		st.logger.Error("session store load failed", errField(err))
		return nil, false, errIdPUnavailable
	}
	if cur == nil {
		return nil, false, errGrantGone // logged out meanwhile
	}
	if s.spent != "" && cur.RefreshToken == s.spent {
		// s is a refresh of this record kept in memory (storage refused
		// it): it holds the live refresh token.
		cur = s
	}
	ns, err := at(ctx, cur)
	if err == nil && cur == s && ns != cur {
		ns.spent = s.spent // the next version of the record, which still holds s.spent
	}
	if err != nil {
		if errors.Is(err, errGrantGone) {
			_ = st.deleteLocked(ctx, s.ID)
		}
		return nil, false, err
	}
	if ns == cur {
		if cur == s {
			return ns, false, nil // a kept refresh, still not stored
		}
		ns.persisted = true // another instance refreshed it meanwhile
		return ns, true, nil
	}
	if ns.ProviderSID != cur.ProviderSID {
		// The provider session changed (a refreshed ID token with another
		// sid): indexed under it too, for its back-channel logout.
		if err := st.index(ctx, ns); err != nil {
			count(st.m.storeErrors, "store")
			st.logger.Error("indexing refreshed session failed", errField(err))
		}
	}
	ns.persisted = true // before store shares it (session_cache)
	if err := st.store(ctx, ns); err != nil {
		ns.persisted = false
		count(st.m.storeErrors, "store")
		st.logger.Error("storing refreshed session failed; kept in memory", errField(err))
		return ns, false, nil
	}
	return ns, true, nil
}

// update overwrites the record of s under the session's storage lock, only
// if the record still exists (errSessionEnded otherwise) and s is its next
// version: it holds the record's refresh token, or the one s's refresh
// spent. A newer record (refreshed meanwhile on another instance) is kept.
func (st *storedSessions) update(ctx context.Context, s *session) error {
	return st.locked(ctx, s.ID, func() error {
		cur, err := st.load(ctx, s.ID)
		if err != nil {
			return err
		}
		if cur == nil {
			st.cache.Delete(s.ID)
			return errSessionEnded
		}
		if cur.RefreshToken != s.RefreshToken && (s.spent == "" || cur.RefreshToken != s.spent) ||
			cur.RefreshToken == s.RefreshToken && cur.Expiry > s.Expiry {
			st.cache.Delete(s.ID) // the next request reads the newer record
			return nil
		}
		return st.store(ctx, s)
	})
}

// store writes the record of s.
func (st *storedSessions) store(ctx context.Context, s *session) error {
	st.cache.Delete(s.ID)
	// "<until>.<sealed session>": the sweep reads the expiry without the id
	// the seal is bound to.
	until := s.until(st.lifetime).Unix()
	rec := strconv.FormatInt(until, 10) + "." + st.sealer.Seal(encodeSession(s), "stored-session:"+s.ID)
	if err := st.storage.Store(context.WithoutCancel(ctx), sessionKey(s.ID), []byte(rec)); err != nil {
		return err
	}
	st.remember(s)
	return nil
}

// remember caches a session just read from or written to storage.
func (st *storedSessions) remember(s *session) {
	if st.cacheTTL > 0 {
		st.cache.Put(s.ID, s, time.Now().Add(st.cacheTTL))
	}
}

// load reads a stored session; (nil, nil) when it does not exist, cannot be
// opened, or has expired (then it is deleted: storage does not keep
// sessions past their lifetime).
func (st *storedSessions) load(ctx context.Context, id string) (*session, error) {
	b, err := st.storage.Load(ctx, sessionKey(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	_, sealed, _ := strings.Cut(string(b), ".")
	pt, err := st.sealer.Open(sealed, "stored-session:"+id)
	if err != nil {
		return nil, nil
	}
	s, err := decodeSession(pt)
	if err != nil || s.ID != id {
		return nil, nil
	}
	if s.expired(st.lifetime, time.Now()) {
		_ = st.storage.Delete(context.WithoutCancel(ctx), sessionKey(id))
		return nil, nil
	}
	return s, nil
}

// delete deletes a stored session (and its cached copy) under the
// session's storage lock, so that a refresh in flight cannot store it again.
func (st *storedSessions) delete(ctx context.Context, id string) error {
	return st.locked(ctx, id, func() error { return st.deleteLocked(ctx, id) })
}

// locked runs fn holding the session's storage lock, which serializes the
// refreshes, updates and deletions of one session across instances. A
// failure to take the lock is a *storeLockError.
func (st *storedSessions) locked(ctx context.Context, id string, fn func() error) error {
	lock := sessionKey(id)
	if err := st.storage.Lock(ctx, lock); err != nil {
		return &storeLockError{err}
	}
	defer func() {
		if err := st.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			st.logger.Error("session store unlock failed", errField(err))
		}
	}()
	return fn()
}

// storeLockError: the session's storage lock could not be taken.
type storeLockError struct{ err error }

func (e *storeLockError) Error() string { return "session store lock: " + e.err.Error() }
func (e *storeLockError) Unwrap() error { return e.err }

// deleteLocked is delete for a caller holding the lock.
func (st *storedSessions) deleteLocked(ctx context.Context, id string) error {
	st.cache.Delete(id)
	return st.storage.Delete(ctx, sessionKey(id))
}

// index records s under its provider sid and its sub.
func (st *storedSessions) index(ctx context.Context, s *session) error {
	entry := hashKey(s.ID)
	sealed := []byte(st.sealer.Seal([]byte(s.ID), "session-index"))
	if s.ProviderSID != "" {
		if err := st.storage.Store(ctx, sidIndex(s.Identity.Issuer, s.ProviderSID)+"/"+entry, sealed); err != nil {
			return err
		}
	}
	return st.storage.Store(ctx, subIndex(s.Identity.Issuer, s.Identity.Subject)+"/"+entry, sealed)
}

// endIndexed deletes every stored session listed under index (sidIndex or
// subIndex) and the index entries; it returns how many sessions it ended.
func (st *storedSessions) endIndexed(ctx context.Context, index string) (int, error) {
	keys, err := st.storage.List(ctx, index, false)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		b, err := st.storage.Load(ctx, k)
		if err != nil {
			continue
		}
		if id, err := st.sealer.Open(string(b), "session-index"); err == nil {
			if err := st.delete(ctx, string(id)); err == nil {
				n++
			}
		}
		_ = st.storage.Delete(ctx, k)
	}
	return n, nil
}

// sweep deletes records past their lifetime (also deleted when met) and
// index entries whose session no longer exists, at most sweepBatch of each.
func (st *storedSessions) sweep(ctx context.Context, now time.Time) int {
	return st.sweepRecords(ctx, now) + st.sweepIndex(ctx, now)
}

func (st *storedSessions) sweepRecords(ctx context.Context, now time.Time) int {
	n := 0
	for _, k := range listBatch(ctx, st.storage, st.logger, sessionsPrefix, &st.sweeps.records) {
		b, err := st.storage.Load(ctx, k)
		if err != nil {
			continue
		}
		head, _, _ := strings.Cut(string(b), ".")
		until, err := strconv.ParseInt(head, 10, 64)
		expired := err != nil || until < now.Unix() // unreadable records go too
		if expired && st.storage.Delete(ctx, k) == nil {
			n++
		}
	}
	return n
}

func (st *storedSessions) sweepIndex(ctx context.Context, now time.Time) int {
	n, seen := 0, 0
	for kind, cur := range map[string]*listCursor{"sid": &st.sweeps.sids, "sub": &st.sweeps.subs} {
		for _, dir := range listBatch(ctx, st.storage, st.logger, indexPrefix+kind, cur) {
			for _, k := range listBatch(ctx, st.storage, st.logger, dir, nil) {
				if seen++; seen > sweepBatch {
					return n
				}
				b, err := st.storage.Load(ctx, k)
				if err != nil {
					continue
				}
				id, err := st.sealer.Open(string(b), "session-index")
				if err == nil && (st.storage.Exists(ctx, sessionKey(string(id))) || st.young(ctx, k, now)) {
					continue
				}
				if st.storage.Delete(ctx, k) == nil {
					n++
				}
			}
		}
	}
	return n
}

// indexGrace spares an index entry without its session for a while: a
// login writes the entry first and the record next, and a sweep between
// the two must not leave a session its back-channel logout cannot find.
const indexGrace = time.Minute

// young tells whether the entry at key was written within indexGrace
// before now (an entry of unknown age is not: a storage without
// modification times would otherwise keep every entry).
func (st *storedSessions) young(ctx context.Context, key string, now time.Time) bool {
	info, err := st.storage.Stat(ctx, key)
	return err == nil && !info.Modified.IsZero() && now.Sub(info.Modified) < indexGrace
}

// Interface guard
var _ sessionBackend = (*storedSessions)(nil)
