package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// OpenID Connect Back-Channel Logout 1.0: the provider POSTs a logout token
// naming a provider session (sid) and/or a user (sub); every matching session
// ends, on every instance that shares the storage.
//
// With `session store`, sessions are indexed by sid and sub in storage and
// the matching records are deleted (storedSessions.endIndexed). With cookie sessions (nothing to delete
// server-side) a revocation is written to storage and every instance reloads
// the revocations every revocationReload.

func hashKey(parts ...string) string {
	h := sha256.Sum256([]byte(strings.Join(parts, "\x00")))
	return hex.EncodeToString(h[:16])
}

// serveBackchannelLogout validates a logout token and ends the sessions it
// names. Any invalid token gets 400 and ends nothing.
func (o *OIDC) serveBackchannelLogout(w http.ResponseWriter, r *http.Request, p *provider) {
	w.Header().Set("Cache-Control", "no-store")
	bad := func(desc string, err error) {
		fields := []zap.Field{zap.String("reason", desc), zap.String("remote", r.RemoteAddr)}
		if err != nil {
			fields = append(fields, errField(err))
		}
		o.logger.Warn("back-channel logout rejected", fields...)
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_request", ErrorDescription: desc})
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{Error: "invalid_request", ErrorDescription: "POST"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
	raw := r.PostFormValue("logout_token")
	if raw == "" {
		bad("missing logout_token", nil)
		return
	}
	lt, err := p.VerifyLogoutToken(r.Context(), raw)
	if err != nil {
		bad("invalid logout token", err)
		return
	}
	var extra struct {
		IAT    *float64                  `json:"iat"`
		Events map[string]map[string]any `json:"events"`
	}
	if err := lt.Claims(&extra); err != nil || extra.IAT == nil {
		bad("logout token without iat", err)
		return
	}
	if _, ok := extra.Events["http://schemas.openid.net/event/backchannel-logout"]; !ok {
		bad("logout token without the back-channel logout event", nil)
		return
	}
	if time.Unix(int64(*extra.IAT), 0).After(time.Now().Add(idp.MaxClockSkew)) {
		bad("logout token issued in the future", nil)
		return
	}
	ctx := context.WithoutCancel(r.Context())
	iss := lt.Issuer
	// Replays are refused by a marker shared through storage, written only
	// once the logout took effect: a provider retrying after a 503 is heard.
	marker := o.key("backchannel/jti/" + hashKey(iss, lt.TokenID))
	if o.storage.Exists(ctx, marker) {
		bad("logout token replayed", nil)
		return
	}
	unavailable := func(err error) {
		o.logger.Error("back-channel logout: storage", errField(err))
		w.Header().Set("Retry-After", "5")
		writeJSON(w, http.StatusServiceUnavailable, oauthError{Error: "temporarily_unavailable"})
	}
	// Both kinds of session end, whatever this handler's mode: handlers of
	// one namespace may differ in it (a rolling change of `session`).
	ended := 0
	for _, idx := range indexesFor(iss, lt.SessionID, lt.Subject) {
		n, err := o.rt.stored.endIndexed(ctx, idx)
		if err != nil {
			unavailable(err)
			return
		}
		ended += n
	}
	now := time.Now()
	rv := revocation{Kind: "sub", Key: hashKey(iss, lt.Subject), At: now.Unix(), AtMs: now.UnixMilli(),
		Until: now.Add(time.Duration(o.SessionLifetime)).Unix()}
	if lt.SessionID != "" {
		rv.Kind, rv.Key = "sid", hashKey(iss, lt.SessionID)
	}
	if err := o.storeRevocation(ctx, rv); err != nil {
		unavailable(err)
		return
	}
	if o.BackchannelRevokeAZAT && o.azat != nil && lt.Subject != "" {
		if err := o.azat.Grants().Forget(ctx, iss+"#"+lt.Subject); err != nil {
			o.logger.Error("back-channel logout: revoking AZATs failed", errField(err))
		}
	}
	exp, _ := json.Marshal(lt.Expiry.Add(idp.MaxClockSkew).Unix())
	if err := o.storage.Store(ctx, marker, exp); err != nil {
		// The logout took effect; a replay of it would end nothing more.
		o.logger.Warn("back-channel logout: storing the replay marker failed", errField(err))
	}
	o.logger.Info("back-channel logout", zap.String("sub", lt.Subject), zap.Bool("sid", lt.SessionID != ""), zap.Int("stored_sessions_ended", ended))
	w.WriteHeader(http.StatusOK)
}

// indexesFor lists the session indexes a logout token names: its sid when
// present (that provider session only), else its sub (all of the user's).
func indexesFor(iss, sid, sub string) []string {
	if sid != "" {
		return []string{sidIndex(iss, sid)}
	}
	return []string{subIndex(iss, sub)}
}
