package caddyoidc

import (
	"context"
	"errors"
	"html/template"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// Logout: POST <routes>/logout ends the session everywhere — its stored
// record or, for cookie sessions, a revocation of its id in storage that
// every instance applies (copies of the cookie stop working) — revokes the
// refresh token at the provider, and, unless `azat { logout keep }`, drops
// the user's grant, which ends their AZATs too. The browser then goes to
// the provider's end_session_endpoint, to post_logout_redirect, or to the
// local logged-out page.

var logoutPage = template.Must(template.New("logout").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Log out</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>Log out?</h1>
<form method="post" action="{{.}}"><button type="submit">Log out</button></form>
</body></html>`))

var loggedOutPage = template.Must(template.New("logged-out").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Logged out</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<main><h1>You are logged out</h1>
<p>Your session on this site has ended.</p>
<p><a href="{{.}}">Log in again</a></p></main>
</body></html>`))

// serveLoggedOut shows the page a logout ends on when the provider has no
// end_session_endpoint and no post_logout_redirect is configured.
func serveLoggedOut(w http.ResponseWriter, r *http.Request, login string) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{Error: "invalid_request", ErrorDescription: "GET"})
		return
	}
	pageHeaders(w, "'none'")
	_ = loggedOutPage.Execute(w, login)
}

// serveLogout ends the session on POST (same-origin only); GET shows a page
// with a button, since a link followed from another site must not log out.
func (o *OIDC) serveLogout(w http.ResponseWriter, r *http.Request, p *provider) {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		// form-action also applies to the redirects that follow the POST:
		// the provider's end_session_endpoint and post_logout_redirect.
		formAction := "'self'"
		for _, target := range []string{p.Metadata().EndSessionEndpoint, o.rt.postLogoutURL} {
			if u, err := url.Parse(target); err == nil && u.Host != "" && (u.Scheme == "https" || u.Scheme == "http") {
				formAction += " " + u.Scheme + "://" + u.Host
			}
		}
		pageHeaders(w, formAction)
		_ = logoutPage.Execute(w, o.Routes+"/logout")
		return
	case http.MethodPost:
	default:
		w.Header().Set("Allow", "GET, POST")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "logout takes POST")
		return
	}
	if !sameOrigin(r) {
		o.logger.Warn("cross-site logout refused", zap.String("origin", idp.Printable(r.Header.Get("Origin"), 200)))
		o.writeError(w, r, http.StatusForbidden, "invalid_request", "cross-site logout refused")
		return
	}
	sessions, err := o.logoutSessions(r)
	if errors.Is(err, errTooManyCookies) {
		o.logger.Warn("logout refused: the browser sent more session cookies than are tried", zap.String("remote", r.RemoteAddr))
		o.clearSession(w, r, nil)
		o.writeError(w, r, http.StatusBadRequest, "invalid_request",
			"this browser sent many conflicting session cookies for this site; your session could not be identified, so it may still be active elsewhere: close the browser and clear this site's cookies")
		return
	}
	if err != nil {
		o.logger.Error("logout: loading the session failed", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "sessions are unavailable; retry")
		return
	}
	for _, s := range sessions {
		if err := o.endSession(r.Context(), p, s); err != nil {
			// The cookie is still cleared below, but a copy would keep
			// working: say so rather than pretend.
			o.logger.Error("logout: ending the session in storage failed", errField(err))
			o.clearSession(w, r, nil)
			o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the logout could not be recorded; retry")
			return
		}
	}
	o.clearSession(w, r, nil)
	target := o.Routes + "/logged-out"
	if o.rt.postLogoutURL != "" {
		target = o.rt.postLogoutURL
	}
	if len(sessions) > 0 {
		subs := make([]string, len(sessions))
		for i, s := range sessions {
			subs[i] = s.Identity.Subject
		}
		o.logger.Info("logout", zap.Strings("sub", subs))
		if p.Metadata().EndSessionEndpoint != "" {
			// With several candidates (a tossed-in session beside ours), no
			// id_token_hint: naming the wrong one would end another user's
			// session at the provider and leave ours open there.
			var hint *session
			if len(sessions) == 1 {
				hint = sessions[0]
			}
			target = o.endSessionURL(r, p, hint)
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, target, http.StatusSeeOther)
}

// endSession ends s on every instance: the stored record goes (with
// `session store`), or the session id is revoked in storage (cookie
// sessions: copies of the cookie stop working). Its refresh token is
// revoked at the provider; a grant-backed session drops the user's grant,
// and with it their AZATs, unless `azat { logout keep }`.
func (o *OIDC) endSession(ctx context.Context, p *provider, s *session) error {
	ctx = context.WithoutCancel(ctx)
	last, err := o.rt.sessions.end(ctx, s)
	if err != nil {
		return err
	}
	if last.RefreshToken != "" && p.Metadata().RevocationEndpoint != "" {
		o.revoke(ctx, p, last.RefreshToken, "refresh_token")
	}
	if s.GrantKey != "" && o.azat != nil && !o.azat.KeepOnLogout() {
		if g, err := o.azat.Grants().Load(ctx, s.GrantKey); err == nil && g != nil && g.RefreshToken != "" && p.Metadata().RevocationEndpoint != "" {
			o.revoke(ctx, p, g.RefreshToken, "refresh_token")
		}
		if err := o.azat.Grants().Forget(ctx, s.GrantKey); err != nil {
			return err
		}
		o.rt.unstored.forget(s.GrantKey)
	}
	return nil
}

// endSessionURL builds the RP-initiated logout request (OpenID Connect
// RP-Initiated Logout 1.0); s, when known, gives the id_token_hint.
func (o *OIDC) endSessionURL(r *http.Request, p *provider, s *session) string {
	u, err := url.Parse(p.Metadata().EndSessionEndpoint)
	if err != nil {
		return o.Routes + "/logged-out"
	}
	q := u.Query()
	if s != nil && s.IDToken != "" {
		q.Set("id_token_hint", s.IDToken)
	}
	q.Set("client_id", o.rt.clientID)
	post := o.rt.postLogoutURL
	if post == "" {
		post = origin(r) + "/"
	}
	q.Set("post_logout_redirect_uri", post)
	u.RawQuery = q.Encode()
	return u.String()
}

// revoke revokes a token at the provider (RFC 7009), best effort.
func (o *OIDC) revoke(ctx context.Context, p *provider, token, hint string) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Duration(o.IdPTimeout))
	defer cancel()
	var oe *idp.OAuthError
	switch err := p.Revoke(ctx, token, hint); {
	case errors.As(err, &oe):
		o.logger.Warn("token revocation refused", zap.Int("status", oe.Status), zap.String("error", oe.Code))
	case err != nil:
		o.logger.Warn("token revocation failed", errField(err))
	}
}
