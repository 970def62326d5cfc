package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io/fs"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Sessions live either entirely in sealed cookies or in Caddy storage with a
// sealed session id in the cookie.

// loadSession returns the request's session, or nil when there is none (or
// it is invalid, expired, or unreadable).
func (o *OIDC) loadSession(r *http.Request) (*session, error) {
	raw := readChunked(r, o.cookieOpts(r))
	if raw == "" {
		return nil, nil
	}
	return o.sessionFromCookie(r.Context(), raw)
}

// sessionFromCookie opens the session a cookie value names; nil when it is
// invalid, foreign, expired or ended.
func (o *OIDC) sessionFromCookie(ctx context.Context, raw string) (*session, error) {
	var s *session
	if o.Session != "store" {
		if s, _ = o.rt.sessions.Get(raw, time.Now()); s != nil {
			count(o.rt.m.cacheHits, "session")
		}
	}
	if s == nil {
		pt, err := o.rt.sealer.Open(raw, o.sessionPurpose())
		if err != nil {
			return nil, nil // tampered or foreign cookie: treated as no session
		}
		if o.Session == "store" {
			s, err = o.loadStoredCached(ctx, string(pt))
			if err != nil || s == nil {
				return nil, err
			}
		} else {
			if s, err = decodeSession(pt); err != nil {
				return nil, nil
			}
			o.rt.sessions.Put(raw, s, time.Unix(s.Created, 0).Add(time.Duration(o.SessionLifetime)))
		}
	}
	if o.sessionExpired(s, time.Now()) {
		return nil, nil
	}
	if o.Session != "store" && o.rt.revoked.revoked(s) {
		return nil, nil // ended by a logout or back-channel logout
	}
	return s, nil
}

// logoutSessions are the sessions a logout request names: its session, or
// when its chunks come twice (a cookie tossed in beside ours), every
// session one of the possible values opens, so that the real one ends
// whichever copy it is.
//
// errTooManyCookies: the request carries more candidate values than are
// tried, and none of those tried opened: the logout cannot tell whether it
// ended the session, so it must not say it did.
func (o *OIDC) logoutSessions(r *http.Request) ([]*session, error) {
	s, err := o.loadSession(r)
	if err != nil {
		return nil, err
	}
	if s != nil {
		return []*session{s}, nil
	}
	cands, complete := chunkCandidates(r, o.cookieOpts(r))
	var out []*session
	for _, raw := range cands {
		s, err := o.sessionFromCookie(r.Context(), raw)
		if err != nil {
			return nil, err
		}
		if s != nil && !slices.ContainsFunc(out, func(x *session) bool { return x.ID == s.ID }) {
			out = append(out, s)
		}
	}
	if len(out) == 0 && !complete {
		return nil, errTooManyCookies
	}
	return out, nil
}

var errTooManyCookies = errors.New("too many session cookies to tell which is ours")

func (o *OIDC) sessionPurpose() string {
	if o.Session == "store" {
		return "session-id"
	}
	return "session"
}

// errSessionEnded: the stored session was deleted meanwhile (logout,
// back-channel logout, on any instance): it is never written again.
var errSessionEnded = errors.New("the session has ended")

// createSession writes a new session to the cookie (and storage).
func (o *OIDC) createSession(w http.ResponseWriter, r *http.Request, s *session) error {
	return o.writeSession(w, r, s, o.storeSession)
}

// saveSession writes a refreshed session to the cookie and, with the
// session store, over its record only while that record exists
// (errSessionEnded otherwise): a refresh never brings back a session that
// was ended, on this instance or another.
func (o *OIDC) saveSession(w http.ResponseWriter, r *http.Request, s *session) error {
	return o.writeSession(w, r, s, o.updateStored)
}

func (o *OIDC) writeSession(w http.ResponseWriter, r *http.Request, s *session, store func(context.Context, *session) error) error {
	maxAge := int(time.Until(time.Unix(s.Created, 0).Add(time.Duration(o.SessionLifetime))).Seconds())
	if maxAge <= 0 {
		return errors.New("session expired")
	}
	var value string
	if o.Session == "store" {
		if err := store(r.Context(), s); err != nil {
			return err
		}
		value = o.rt.sealer.Seal([]byte(s.ID), o.sessionPurpose())
	} else {
		value = o.rt.sealer.Seal(encodeSession(s), o.sessionPurpose())
	}
	if !writeChunked(w, r, o.cookieOpts(r), value, maxAge) {
		return errors.New("session too large for cookies; use session store")
	}
	o.writeExposedTokens(w, r, s, maxAge)
	return nil
}

// updateStored overwrites the stored record of s under the session's
// storage lock, only if the record still exists.
func (o *OIDC) updateStored(ctx context.Context, s *session) error {
	ctx = context.WithoutCancel(ctx)
	lock := sessionKey(s.ID)
	if err := o.storage.Lock(ctx, lock); err != nil {
		return err
	}
	defer func() { _ = o.storage.Unlock(ctx, lock) }()
	if !o.storage.Exists(ctx, sessionKey(s.ID)) {
		o.rt.stored.Delete(s.ID)
		return errSessionEnded
	}
	return o.storeSession(ctx, s)
}

// clearSession deletes the session's cookies and stored record.
func (o *OIDC) clearSession(w http.ResponseWriter, r *http.Request, s *session) {
	if s != nil && o.Session == "store" {
		if err := o.deleteStored(context.WithoutCancel(r.Context()), s.ID); err != nil && !errors.Is(err, fs.ErrNotExist) {
			o.logger.Error("deleting stored session", errField(err))
		}
	}
	writeChunked(w, r, o.cookieOpts(r), "", -1)
	o.writeExposedTokens(w, r, nil, -1)
}

// writeExposedTokens sets (or, with s nil, clears) the JavaScript-readable
// token cookies when expose_tokens is on.
func (o *OIDC) writeExposedTokens(w http.ResponseWriter, r *http.Request, s *session, maxAge int) {
	if !o.ExposeTokens {
		return
	}
	opts := o.cookieOpts(r)
	at, it := "", ""
	if s != nil {
		at, it = s.AccessToken, s.IDToken
	}
	for name, v := range map[string]string{accessTokenSuffix: at, idTokenSuffix: it} {
		if v == "" {
			if _, err := r.Cookie(opts.name(name)); err == nil {
				http.SetCookie(w, opts.cookie(opts.name(name), "", "/", -1, false))
			}
			continue
		}
		http.SetCookie(w, opts.cookie(opts.name(name), v, "/", maxAge, false))
	}
}

// sessionKey is the storage key of a stored session. The id is hashed so the
// key (visible in storage listings and logs) is not the secret itself.
func sessionKey(id string) string {
	h := sha256.Sum256([]byte(id))
	return "caddy-oidc/sessions/" + hex.EncodeToString(h[:])
}

func (o *OIDC) storeSession(ctx context.Context, s *session) error {
	o.rt.stored.Delete(s.ID)
	// "<until>.<sealed session>": the sweep reads the expiry without the id
	// the seal is bound to.
	until := time.Unix(s.Created, 0).Add(time.Duration(o.SessionLifetime)).Unix()
	rec := strconv.FormatInt(until, 10) + "." + o.rt.sealer.Seal(encodeSession(s), "stored-session:"+s.ID)
	if err := o.storage.Store(context.WithoutCancel(ctx), sessionKey(s.ID), []byte(rec)); err != nil {
		return err
	}
	o.rememberStored(s)
	return nil
}

// deleteStored deletes a stored session (and its cached copy) under the
// session's storage lock, so that a refresh in flight cannot store it again.
func (o *OIDC) deleteStored(ctx context.Context, id string) error {
	lock := sessionKey(id)
	if err := o.storage.Lock(ctx, lock); err != nil {
		return err
	}
	defer func() { _ = o.storage.Unlock(context.WithoutCancel(ctx), lock) }()
	return o.deleteStoredLocked(ctx, id)
}

// deleteStoredLocked is deleteStored for a caller holding the lock.
func (o *OIDC) deleteStoredLocked(ctx context.Context, id string) error {
	o.rt.stored.Delete(id)
	return o.storage.Delete(ctx, sessionKey(id))
}

// loadStoredCached is loadStored on the request path: a session read within
// session_cache comes from memory.
func (o *OIDC) loadStoredCached(ctx context.Context, id string) (*session, error) {
	if s, ok := o.rt.stored.Get(id, time.Now()); ok {
		count(o.rt.m.cacheHits, "stored_session")
		return s, nil
	}
	s, err := o.loadStored(ctx, id)
	if err == nil && s != nil {
		o.rememberStored(s)
	}
	return s, err
}

// rememberStored caches a session just read from or written to storage.
func (o *OIDC) rememberStored(s *session) {
	if ttl := time.Duration(o.SessionCache); ttl > 0 {
		o.rt.stored.Put(s.ID, s, time.Now().Add(ttl))
	}
}

// loadStored loads a stored session; (nil, nil) when it does not exist.
func (o *OIDC) loadStored(ctx context.Context, id string) (*session, error) {
	b, err := o.storage.Load(ctx, sessionKey(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	_, sealed, _ := strings.Cut(string(b), ".")
	pt, err := o.rt.sealer.Open(sealed, "stored-session:"+id)
	if err != nil {
		return nil, nil
	}
	s, err := decodeSession(pt)
	if err != nil || s.ID != id {
		return nil, nil
	}
	if o.sessionExpired(s, time.Now()) {
		// Deleted when met (and by the sweep): storage does not keep
		// sessions past their lifetime.
		_ = o.storage.Delete(context.WithoutCancel(ctx), sessionKey(id))
		return nil, nil
	}
	return s, nil
}

// sessionExpired tells whether s is past session_lifetime at now.
func (o *OIDC) sessionExpired(s *session, now time.Time) bool {
	return now.Sub(time.Unix(s.Created, 0)) > time.Duration(o.SessionLifetime)
}

// cookieOpts gives the cookie attributes and names for this request. The
// names get the __Host- prefix when the cookies are Secure and host-only
// (no cookie_domain), unless cookie_host_prefix is off: browsers then refuse
// such a cookie from a sibling subdomain or over plain HTTP.
func (o *OIDC) cookieOpts(r *http.Request) cookieOpts {
	secure := r.TLS != nil
	if o.CookieSecure != nil {
		secure = *o.CookieSecure
	}
	ss := http.SameSiteLaxMode
	switch o.CookieSameSite {
	case "strict":
		ss = http.SameSiteStrictMode
	case "none":
		ss = http.SameSiteNoneMode
		secure = true
	}
	c := cookieOpts{secure: secure, sameSite: ss, domain: o.CookieDomain, base: o.CookieName}
	if secure && o.CookieDomain == "" && (o.CookieHostPrefix == nil || *o.CookieHostPrefix) {
		c.prefix = hostPrefix
	}
	return c
}
