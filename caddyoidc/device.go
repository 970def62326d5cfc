package caddyoidc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// The proxy is itself an RFC 8628 device authorization server: a CLI gets a
// user code, the user approves it in the browser after the normal login, and
// the CLI receives an AZAT. It works whatever the provider supports.

const (
	deviceGrantType    = "urn:ietf:params:oauth:grant-type:device_code"
	deviceCodeLifetime = 10 * time.Minute
	devicePollInterval = 5 * time.Second
	// userCodeAlphabet has no vowels (no words) and no look-alikes.
	userCodeAlphabet = "BCDFGHJKLMNPQRSTVWXZ"
	// maxUserCodeTries bounds wrong user codes per session and window.
	maxUserCodeTries  = 10
	userCodeTryWindow = 10 * time.Minute
)

// deviceRecord is a pending device authorization, kept in Caddy storage so
// that any instance can answer the CLI's polls.
type deviceRecord struct {
	UserCode string `json:"user_code"`
	Client   string `json:"client"` // label shown to the user
	Expires  int64  `json:"exp"`
	Interval int64  `json:"interval"` // seconds; grows with slow_down
	LastPoll int64  `json:"last_poll_ms"`
	Status   string `json:"status"` // pending, approved, denied
	GrantKey string `json:"grant_key,omitempty"`
}

func deviceKey(deviceCode string) string {
	h := sha256.Sum256([]byte(deviceCode))
	return "caddy-oidc/device/code/" + hex.EncodeToString(h[:])
}

func userCodeKey(userCode string) string { return "caddy-oidc/device/user/" + userCode }

// newUserCode returns 8 random characters of userCodeAlphabet (~34.6 bits).
func newUserCode() string {
	b := make([]byte, 8)
	out := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	for i := range b {
		// 256 % 20 != 0: reject the biased tail.
		for b[i] >= 240 {
			var one [1]byte
			_, _ = rand.Read(one[:])
			b[i] = one[0]
		}
		out[i] = userCodeAlphabet[int(b[i])%len(userCodeAlphabet)]
	}
	return string(out)
}

// normalizeUserCode uppercases and drops separators; "" when invalid.
func normalizeUserCode(s string) string {
	var b strings.Builder
	for _, c := range strings.ToUpper(s) {
		if c == '-' || c == ' ' {
			continue
		}
		if !strings.ContainsRune(userCodeAlphabet, c) {
			return ""
		}
		b.WriteRune(c)
	}
	if b.Len() != 8 {
		return ""
	}
	return b.String()
}

func formatUserCode(c string) string { return c[:4] + "-" + c[4:] }

// serveDeviceCode answers the device authorization request (RFC 8628 §3.2).
func (o *OIDC) serveDeviceCode(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		writeJSON(w, http.StatusMethodNotAllowed, oauthError{Error: "invalid_request", ErrorDescription: "POST"})
		return
	}
	if o.azat == nil || !o.azat.CanMint() {
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "unsupported_grant_type", ErrorDescription: "this site has no azat block"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_request", ErrorDescription: "bad form"})
		return
	}
	client := printable(r.PostForm.Get("client_id"), 64)
	if client == "" {
		client = "a command-line client"
	}
	deviceCode := seal.RandomString(32)
	rec := deviceRecord{UserCode: newUserCode(), Client: client, Status: "pending",
		Expires: time.Now().Add(deviceCodeLifetime).Unix(), Interval: int64(devicePollInterval / time.Second)}
	ctx := r.Context()
	if err := o.storeDevice(ctx, deviceCode, &rec); err == nil {
		err = o.storage.Store(ctx, userCodeKey(rec.UserCode), []byte(deviceKey(deviceCode)))
	} else {
		o.logger.Error("device authorization: storage", errField(err))
		writeJSON(w, http.StatusServiceUnavailable, oauthError{Error: "temporarily_unavailable"})
		return
	}
	verify := origin(r) + o.Routes + "/device"
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               deviceCode,
		"user_code":                 formatUserCode(rec.UserCode),
		"verification_uri":          verify,
		"verification_uri_complete": verify + "?user_code=" + formatUserCode(rec.UserCode),
		"expires_in":                int(deviceCodeLifetime.Seconds()),
		"interval":                  rec.Interval,
	})
}

func (o *OIDC) storeDevice(ctx context.Context, deviceCode string, rec *deviceRecord) error {
	b, _ := json.Marshal(rec)
	return o.storage.Store(ctx, deviceKey(deviceCode), b)
}

func (o *OIDC) loadDevice(ctx context.Context, key string) (*deviceRecord, error) {
	b, err := o.storage.Load(ctx, key)
	if err != nil {
		return nil, err
	}
	var rec deviceRecord
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, err
	}
	return &rec, nil
}

func (o *OIDC) deleteDevice(ctx context.Context, key string, rec *deviceRecord) {
	_ = o.storage.Delete(ctx, key)
	_ = o.storage.Delete(ctx, userCodeKey(rec.UserCode))
}

// serveDeviceToken answers the CLI's polls (RFC 8628 §3.4, §3.5).
func (o *OIDC) serveDeviceToken(w http.ResponseWriter, r *http.Request) {
	fail := func(status int, code, desc string) {
		writeJSON(w, status, oauthError{Error: code, ErrorDescription: desc})
	}
	if r.Method != http.MethodPost {
		fail(http.StatusMethodNotAllowed, "invalid_request", "POST")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 4096)
	if err := r.ParseForm(); err != nil {
		fail(http.StatusBadRequest, "invalid_request", "bad form")
		return
	}
	if r.PostForm.Get("grant_type") != deviceGrantType {
		fail(http.StatusBadRequest, "unsupported_grant_type", "grant_type must be "+deviceGrantType)
		return
	}
	code := r.PostForm.Get("device_code")
	if code == "" || len(code) > 128 || o.azat == nil {
		fail(http.StatusBadRequest, "invalid_grant", "unknown device_code")
		return
	}
	ctx, key := r.Context(), deviceKey(code)
	// One poll at a time per device code, across instances.
	if err := o.storage.Lock(ctx, key+".lock"); err != nil {
		fail(http.StatusServiceUnavailable, "temporarily_unavailable", "")
		return
	}
	defer o.storage.Unlock(context.WithoutCancel(ctx), key+".lock") //nolint:errcheck
	rec, err := o.loadDevice(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		fail(http.StatusBadRequest, "invalid_grant", "unknown or already used device_code")
		return
	}
	if err != nil {
		o.logger.Error("device token: storage", errField(err))
		fail(http.StatusServiceUnavailable, "temporarily_unavailable", "")
		return
	}
	now := time.Now()
	if now.Unix() >= rec.Expires {
		o.deleteDevice(ctx, key, rec)
		fail(http.StatusBadRequest, "expired_token", "the device code expired; start again")
		return
	}
	switch rec.Status {
	case "denied":
		o.deleteDevice(ctx, key, rec)
		fail(http.StatusBadRequest, "access_denied", "the user denied the request")
		return
	case "approved":
		m, err := o.azat.Mint(ctx, rec.GrantKey, origin(r))
		if err != nil {
			o.logger.Warn("device token: mint failed", errField(err))
			if errors.Is(err, azatauth.ErrNoGrant) {
				o.deleteDevice(ctx, key, rec)
				fail(http.StatusBadRequest, "access_denied", "no stored login with offline access for this user")
				return
			}
			fail(http.StatusServiceUnavailable, "temporarily_unavailable", "")
			return
		}
		o.deleteDevice(ctx, key, rec) // single use
		count(metrics.mints, "success")
		o.logger.Info("device flow: azat issued", zap.String("sub", rec.GrantKey), zap.String("client", rec.Client))
		writeJSON(w, http.StatusOK, map[string]any{"access_token": m.Token, "token_type": "Bearer",
			"expires_in": m.ExpiresIn, "expires_at": m.ExpiresAt})
		return
	}
	// Pending: slow_down when polled faster than the interval (§3.5).
	nowMs := now.UnixMilli()
	tooFast := rec.LastPoll != 0 && nowMs-rec.LastPoll < rec.Interval*1000-250
	rec.LastPoll = nowMs
	if tooFast {
		rec.Interval += 5
	}
	if err := o.storeDevice(ctx, code, rec); err != nil {
		fail(http.StatusServiceUnavailable, "temporarily_unavailable", "")
		return
	}
	if tooFast {
		fail(http.StatusBadRequest, "slow_down", "poll at most every "+itoa(rec.Interval)+" seconds")
		return
	}
	fail(http.StatusBadRequest, "authorization_pending", "waiting for the user")
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

// userCodeTries limits wrong user codes per session (brute force bound).
type userCodeTries struct {
	mu sync.Mutex
	m  map[string][]time.Time
}

// allow records a try of sessionID and tells whether it is within bounds.
func (u *userCodeTries) allow(sessionID string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.m == nil {
		u.m = map[string][]time.Time{}
	}
	now := time.Now()
	recent := u.m[sessionID][:0]
	for _, t := range u.m[sessionID] {
		if now.Sub(t) < userCodeTryWindow {
			recent = append(recent, t)
		}
	}
	if len(recent) >= maxUserCodeTries {
		u.m[sessionID] = recent
		return false
	}
	u.m[sessionID] = append(recent, now)
	if len(u.m) > 100000 {
		clear(u.m)
	}
	return true
}

var devicePage = template.Must(template.New("device").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Device login</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>Connect a device</h1>
{{if .Message}}<p id="message"><b>{{.Message}}</b></p>{{end}}
{{if .Client}}
<p><b id="client">{{.Client}}</b> asks to act as <b>{{.User}}</b> with a token valid {{.Lifetime}}.
Code: <b id="code">{{.Code}}</b>. Approve only if you started this on your own device.</p>
<form method="post" action="{{.Action}}">
<input type="hidden" name="user_code" value="{{.Code}}"><input type="hidden" name="csrf" value="{{.CSRF}}">
<button type="submit" name="action" value="approve" id="approve">Approve</button>
<button type="submit" name="action" value="deny" id="deny">Deny</button>
</form>
{{else if not .Done}}
<form method="get" action="{{.Action}}">
<label>Code shown by your device: <input name="user_code" id="user_code" value="{{.Code}}" autocomplete="off"></label>
<button type="submit" id="continue">Continue</button>
</form>
{{end}}
</body></html>`))

type devicePageData struct {
	Message, Client, User, Code, CSRF, Action, Lifetime string
	Done                                                bool
}

// serveDevice is the browser side: look the code up, then approve or deny.
func (o *OIDC) serveDevice(w http.ResponseWriter, r *http.Request, p *provider) {
	if o.azat == nil || !o.azat.CanMint() {
		o.writeError(w, r, http.StatusNotFound, "not_found", "this site has no azat block")
		return
	}
	s, err := o.loadSession(r)
	if err != nil {
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "sessions are unavailable")
		return
	}
	if s == nil || !s.usable(time.Now()) {
		if r.Method != http.MethodGet {
			o.writeError(w, r, http.StatusUnauthorized, "unauthorized", "log in first")
			return
		}
		http.Redirect(w, r, o.Routes+"/login?back="+url.QueryEscape(safeBack(r.URL.RequestURI())), http.StatusFound)
		return
	}
	data := devicePageData{Action: o.Routes + "/device", User: s.Identity.PreferredUsername,
		Lifetime: o.azat.Lifetime().String()}
	if data.User == "" {
		data.User = s.Identity.Subject
	}
	page := func(status int) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
		w.Header().Set("X-Frame-Options", "DENY")
		w.WriteHeader(status)
		_ = devicePage.Execute(w, data)
	}
	raw := r.FormValue("user_code")
	if r.Method == http.MethodGet && raw == "" {
		page(http.StatusOK)
		return
	}
	if !o.rt.codeTries.allow(s.ID) {
		data.Message = "Too many attempts. Wait a few minutes."
		page(http.StatusTooManyRequests)
		return
	}
	code := normalizeUserCode(raw)
	var rec *deviceRecord
	var key string
	if code != "" {
		if b, err := o.storage.Load(r.Context(), userCodeKey(code)); err == nil {
			key = string(b)
			rec, _ = o.loadDevice(r.Context(), key)
		}
	}
	if rec == nil || rec.Status != "pending" || time.Now().Unix() >= rec.Expires {
		data.Message = "Unknown or expired code. Check the code your device shows, or start again there."
		data.Code = printable(raw, 16)
		page(http.StatusBadRequest)
		return
	}
	data.Code, data.Client = formatUserCode(code), rec.Client
	data.CSRF = o.rt.sealer.Seal([]byte(s.ID+"\x00"+code), "device-csrf")
	if r.Method == http.MethodGet {
		page(http.StatusOK)
		return
	}
	if r.Method != http.MethodPost {
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "GET or POST")
		return
	}
	// Approval: same-origin POST carrying a token bound to this session and code.
	pt, err := o.rt.sealer.Open(r.PostFormValue("csrf"), "device-csrf")
	if !sameOrigin(r) || err != nil || subtle.ConstantTimeCompare(pt, []byte(s.ID+"\x00"+code)) != 1 {
		o.logger.Warn("device approval refused: cross-site or bad csrf token", zap.String("remote", r.RemoteAddr))
		o.writeError(w, r, http.StatusForbidden, "invalid_request", "cross-site request refused")
		return
	}
	switch r.PostFormValue("action") {
	case "approve":
		if s.GrantKey == "" {
			data.Client, data.Done = "", true
			data.Message = "Your login has no offline access, so no long-lived token can be issued. Log out, log in again allowing offline access, and retry."
			page(http.StatusConflict)
			return
		}
		rec.Status, rec.GrantKey = "approved", s.GrantKey
	case "deny":
		rec.Status = "denied"
	default:
		o.writeError(w, r, http.StatusBadRequest, "invalid_request", "approve or deny")
		return
	}
	b, _ := json.Marshal(rec)
	if err := o.storage.Store(r.Context(), key, b); err != nil {
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "could not save")
		return
	}
	o.logger.Info("device flow "+rec.Status, zap.String("sub", s.Identity.Subject), zap.String("client", rec.Client))
	data.Client, data.Done = "", true
	if rec.Status == "approved" {
		data.Message = "Approved. You can return to your device."
	} else {
		data.Message = "Denied. Nothing was issued."
	}
	page(http.StatusOK)
}
