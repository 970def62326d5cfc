package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// flowLifetime bounds how long a login attempt may take at the provider.
const flowLifetime = 5 * time.Minute

// maxFlowCookies bounds concurrent login attempts per browser; older flow
// cookies are dropped so a page that loops on login cannot bloat the jar.
const maxFlowCookies = 4

// flowState is kept in a per-attempt sealed cookie between login and
// callback, so several tabs can log in at once.
type flowState struct {
	State    string `json:"s"`
	Nonce    string `json:"n"`
	Verifier string `json:"v"`
	Back     string `json:"b"`
	Redirect string `json:"r"`
	Created  int64  `json:"t"`
}

// flowCookieName is the name of the flow cookie of state (with the
// __Host- prefix when opts has it).
func flowCookieName(opts cookieOpts, state string) string {
	return opts.name(flowSuffix + state[:flowIDLen])
}

func (o *OIDC) redirectURL(r *http.Request) string {
	if o.rt.redirectURL != "" {
		return o.rt.redirectURL
	}
	return origin(r) + o.rt.callbackPath
}

// serveLogin starts the Authorization Code flow with PKCE S256.
func (o *OIDC) serveLogin(w http.ResponseWriter, r *http.Request, p *provider) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "login takes GET")
		return
	}
	f := flowState{
		State:    seal.RandomString(32),
		Nonce:    seal.RandomString(32),
		Verifier: idp.NewVerifier(),
		Back:     safeBack(r.URL.Query().Get("back")),
		Redirect: o.redirectURL(r),
		Created:  time.Now().Unix(),
	}
	b, _ := json.Marshal(f)
	opts := o.cookieOpts(r)
	opts.sameSite = http.SameSiteLaxMode // the provider's redirect back is a cross-site top-level GET
	// Drop surplus earlier attempts.
	n := 0
	for _, c := range r.Cookies() {
		if k, _, active := opts.classify(c.Name); k == flowCookie && active {
			if n++; n >= maxFlowCookies {
				http.SetCookie(w, opts.cookie(c.Name, "", opts.path(o.Routes), -1, true))
			}
		}
	}
	http.SetCookie(w, opts.cookie(flowCookieName(opts, f.State), o.rt.sealer.Seal(b, "flow:"+f.State),
		opts.path(o.Routes), int(flowLifetime.Seconds()), true))

	count(o.rt.m.logins, "started")
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, p.AuthURL(idp.AuthRequest{
		State: f.State, Nonce: f.Nonce, Verifier: f.Verifier, RedirectURI: f.Redirect,
		Scopes: o.Scopes, Extra: o.AuthParams,
	}), http.StatusFound)
}

// callbackError ends a failed callback: a log line, a 4xx page, no session.
func (o *OIDC) callbackError(w http.ResponseWriter, r *http.Request, status int, reason string, err error) {
	fields := []zap.Field{zap.String("reason", reason), zap.Int("status", status), zap.String("remote", r.RemoteAddr)}
	if err != nil {
		fields = append(fields, errField(err))
	}
	o.logger.Warn("login callback rejected", fields...)
	if status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "5")
		count(o.rt.m.callbacks, "unavailable")
	} else {
		count(o.rt.m.callbacks, "rejected")
	}
	writePage(w, status, "Login failed", reason, o.Routes+"/login")
}

// serveCallback completes the flow: state, code exchange with the PKCE
// verifier, ID token verification, optional userinfo, new session.
func (o *OIDC) serveCallback(w http.ResponseWriter, r *http.Request, p *provider) {
	if r.Method != http.MethodGet {
		o.callbackError(w, r, http.StatusMethodNotAllowed, "callback takes GET", nil)
		return
	}
	q := r.URL.Query()
	state := q.Get("state")
	if len(state) < 16 || len(state) > 128 {
		o.callbackError(w, r, http.StatusBadRequest, "missing or malformed state", nil)
		return
	}
	opts := o.cookieOpts(r)
	name := flowCookieName(opts, state)
	value, n := uniqueCookie(r, name)
	if n != 1 {
		if n > 1 {
			// Two flow cookies of one name: one was tossed in from
			// another Domain or Path; neither is trusted.
			expireCookie(w, r, opts, name, false)
			o.callbackError(w, r, http.StatusBadRequest, "two login cookies for this state; start again", nil)
			return
		}
		o.callbackError(w, r, http.StatusBadRequest, "no login in progress for this state (expired, other browser, or already used)", nil)
		return
	}
	http.SetCookie(w, opts.cookie(name, "", opts.path(o.Routes), -1, true))
	var f flowState
	pt, err := o.rt.sealer.Open(value, "flow:"+state)
	if err != nil || json.Unmarshal(pt, &f) != nil || f.State != state {
		o.callbackError(w, r, http.StatusBadRequest, "state does not match the login in progress", nil)
		return
	}
	if time.Since(time.Unix(f.Created, 0)) > flowLifetime {
		o.callbackError(w, r, http.StatusBadRequest, "login took too long; start again", nil)
		return
	}
	if _, used := o.rt.usedStates.Get(state, time.Now()); used {
		o.callbackError(w, r, http.StatusBadRequest, "this login response was already used", nil)
		return
	}
	// RFC 9207: when the provider names itself, it must be ours (mix-up defense).
	if iss := q.Get("iss"); iss != "" && iss != p.Metadata().Issuer {
		o.callbackError(w, r, http.StatusBadRequest, "response from an unexpected issuer", nil)
		return
	}
	if e := q.Get("error"); e != "" {
		status := http.StatusBadRequest
		if e == "access_denied" {
			status = http.StatusForbidden
		}
		o.callbackError(w, r, status, "the identity provider refused the login: "+idp.Printable(e, 64), nil)
		return
	}
	code := q.Get("code")
	if code == "" {
		o.callbackError(w, r, http.StatusBadRequest, "missing authorization code", nil)
		return
	}

	tok, err := p.Exchange(r.Context(), code, f.Redirect, f.Verifier)
	if err != nil {
		if errors.Is(err, idp.ErrUnavailable) {
			o.callbackError(w, r, http.StatusServiceUnavailable, "the identity provider is unavailable", err)
		} else {
			o.callbackError(w, r, http.StatusBadRequest, "the authorization code was refused", err)
		}
		return
	}
	// The replay marker is claimed once the provider accepted the code, so
	// that only real logins make markers: callbacks anyone can forge (a flow
	// cookie from /login and a made-up code) cannot fill the map.
	switch added, full := o.rt.usedStates.Claim(state, struct{}{}, time.Unix(f.Created, 0).Add(flowLifetime)); {
	case full:
		// Never evict a live marker (that would let a used response be
		// replayed): refuse new logins until markers expire.
		o.callbackError(w, r, http.StatusServiceUnavailable, "too many logins at once; retry in a minute", nil)
		return
	case !added:
		o.callbackError(w, r, http.StatusBadRequest, "this login response was already used", nil)
		return
	}
	rawID := tok.IDToken
	if rawID == "" {
		o.callbackError(w, r, http.StatusBadRequest, "the token response has no id_token", nil)
		return
	}
	claims, err := p.VerifyIDToken(r.Context(), rawID, idp.IDTokenCheck{
		Nonce: f.Nonce, AccessToken: tok.AccessToken,
	})
	if err != nil {
		o.callbackError(w, r, http.StatusUnauthorized, "the ID token is invalid", err)
		return
	}
	if o.fetchUserinfo(p) {
		if err := o.mergeUserinfo(r.Context(), p, tok.AccessToken, claims); err != nil {
			if errors.Is(err, errUserinfoSub) {
				o.callbackError(w, r, http.StatusUnauthorized, "userinfo does not belong to the ID token's subject", err)
				return
			}
			o.logger.Warn("userinfo unavailable; using ID token claims only", errField(err))
		}
	}
	now := time.Now()
	s := &session{
		ID:           seal.RandomString(32),
		AccessToken:  tok.AccessToken,
		TokenType:    tok.TokenType,
		RefreshToken: tok.RefreshToken,
		IDToken:      rawID,
		Created:      now.Unix(),
		CreatedMs:    now.UnixMilli(),
		Identity:     newIdentity(claims, o.RolesClaim, idp.UnverifiedClaims(tok.AccessToken)),
	}
	s.ProviderSID, _ = claims["sid"].(string)
	if !tok.Expiry.IsZero() {
		s.Expiry = tok.Expiry.Unix()
	}
	if o.azat != nil && s.RefreshToken != "" {
		if err := o.storeGrant(r.Context(), s); err != nil {
			o.callbackError(w, r, http.StatusServiceUnavailable, "the login could not be saved", err)
			return
		}
		// One refresh token per user: the session refreshes through the grant.
		s.GrantKey, s.RefreshToken = grantKey(s.Identity), ""
	}
	s.labelIdentity() // as a session read back is (the store caches this one)
	if err := o.createSession(w, r, s); err != nil {
		o.callbackError(w, r, http.StatusServiceUnavailable, "the session could not be saved", err)
		return
	}
	for _, sib := range o.rt.siblings {
		sib.dropSession(w, r)
	}
	count(o.rt.m.callbacks, "success")
	o.logger.Info("login", zap.String("sub", s.Identity.Subject), zap.Bool("refreshable", s.refreshable()))
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, f.Back, http.StatusFound)
}

func (o *OIDC) fetchUserinfo(p *provider) bool {
	if p.Metadata().UserinfoEndpoint == "" {
		return false
	}
	return o.UserinfoFetch == nil || *o.UserinfoFetch
}

var errUserinfoSub = errors.New("userinfo sub differs from the id token's sub")

// mergeUserinfo adds the userinfo claims the ID token lacks. The userinfo
// sub must equal the ID token's (OpenID Connect Core 1.0 §5.3.2).
func (o *OIDC) mergeUserinfo(ctx context.Context, p *provider, accessToken string, claims map[string]any) error {
	ui, err := p.Userinfo(ctx, accessToken)
	if err != nil {
		return err
	}
	if sub, _ := ui["sub"].(string); sub != claims["sub"] {
		return errUserinfoSub
	}
	for k, v := range ui {
		if _, ok := claims[k]; !ok {
			claims[k] = v
		}
	}
	return nil
}

func errField(err error) zap.Field { return zap.String("error", err.Error()) }
