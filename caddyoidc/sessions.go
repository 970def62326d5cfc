package caddyoidc

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"time"
)

// A handler keeps its sessions in a sessionBackend, chosen once at
// provisioning by `session`: cookieSessions (session_cookie.go) seals the
// whole session in its cookie; storedSessions (session_store.go) keeps it in
// Caddy storage with the sealed id in the cookie. The functions here are
// the request side, the same for both: reading the session cookie
// (loadSession), writing it (createSession, saveSession), clearing it.

// sessionBackend is where a handler's sessions live.
type sessionBackend interface {
	// purpose is the seal purpose of the cookie value.
	purpose() string
	// open returns the session a cookie value names; nil when it is
	// invalid, foreign, ended or unknown. An error means the backend could
	// not tell (storage unavailable).
	open(ctx context.Context, raw string) (*session, error)
	// save stores s when the backend keeps it (created: a new login;
	// otherwise a refresh, refused with errSessionEnded when the session
	// was ended meanwhile, and not written again when its refresh stored
	// it already) and returns the cookie value for it.
	save(ctx context.Context, s *session, created bool) (string, error)
	// discard deletes what the backend keeps of s (its cookie is cleared by
	// the caller).
	discard(ctx context.Context, s *session) error
	// end ends s on every instance and every copy of its cookie (logout).
	// It returns the session's last version (a record refreshed on another
	// instance since this request's copy was read holds newer tokens: the
	// ones to revoke at the provider).
	end(ctx context.Context, s *session) (*session, error)
	// refresh calls at, the provider refresh, under the coordination the
	// backend needs across instances (refresh.go dedupes within one);
	// persisted tells whether the result is stored.
	refresh(ctx context.Context, s *session, at refreshFunc) (ns *session, persisted bool, err error)
	// sweep deletes expired records; it returns how many.
	sweep(ctx context.Context, now time.Time) int
}

// refreshFunc spends a session's refresh token and returns the new session.
type refreshFunc func(ctx context.Context, s *session) (*session, error)

// loadSession returns the request's session, or nil when there is none (or
// it is invalid, expired, or unreadable). Here the session cookie is read.
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
	s, err := o.rt.sessions.open(ctx, raw)
	if err != nil || s == nil {
		return nil, err
	}
	if s.expired(time.Duration(o.SessionLifetime), time.Now()) {
		return nil, nil
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

// errSessionEnded: the stored session was deleted meanwhile (logout,
// back-channel logout, on any instance): it is never written again.
var errSessionEnded = errors.New("the session has ended")

// createSession writes a new session to the cookie (and storage).
func (o *OIDC) createSession(w http.ResponseWriter, r *http.Request, s *session) error {
	return o.writeSession(w, r, s, true)
}

// saveSession writes a refreshed session to the cookie and, with the
// session store, over its record only while that record exists
// (errSessionEnded otherwise): a refresh never brings back a session that
// was ended, on this instance or another.
func (o *OIDC) saveSession(w http.ResponseWriter, r *http.Request, s *session) error {
	return o.writeSession(w, r, s, false)
}

func (o *OIDC) writeSession(w http.ResponseWriter, r *http.Request, s *session, created bool) error {
	maxAge := int(time.Until(s.until(time.Duration(o.SessionLifetime))).Seconds())
	if maxAge <= 0 {
		return errors.New("session expired")
	}
	value, err := o.rt.sessions.save(r.Context(), s, created)
	if err != nil {
		return err
	}
	if !writeChunked(w, r, o.cookieOpts(r), value, maxAge) {
		return errors.New("session too large for cookies; use session store")
	}
	o.writeExposedTokens(w, r, s, maxAge)
	return nil
}

// clearSession expires the session cookies and deletes what the backend
// keeps of s (when known).
func (o *OIDC) clearSession(w http.ResponseWriter, r *http.Request, s *session) {
	if s != nil {
		if err := o.rt.sessions.discard(r.Context(), s); err != nil {
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
