package caddyoidc

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/idp"
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
	// maxUserAgent bounds the requester's User-Agent kept and shown.
	maxUserAgent = 200
)

// deviceRecord is a pending device authorization, kept in Caddy storage so
// that any instance can answer the CLI's polls.
type deviceRecord struct {
	UserCode string `json:"user_code"`
	Client   string `json:"client"` // label shown to the user, self-declared
	// IP, UserAgent and Created describe the request that started the
	// flow, for the approval page (RFC 8628 §5.4).
	IP        string `json:"ip,omitempty"`
	UserAgent string `json:"ua,omitempty"`
	Created   int64  `json:"iat,omitempty"`
	Expires   int64  `json:"exp"`
	Interval  int64  `json:"interval"` // seconds; grows with slow_down
	LastPoll  int64  `json:"last_poll_ms"`
	Status    string `json:"status"` // pending, approved, denied
	GrantKey  string `json:"grant_key,omitempty"`
	// MinJTI is the grant's MinJTI when the user approved: every revocation
	// of the grant moves it, and a poll mints only while it is unchanged.
	MinJTI uint64 `json:"min_jti,omitempty"`
}

// approvalStands tells whether an approved record may still mint for g:
// the grant is usable and no revocation (which moves MinJTI) happened since
// the approval. A record without MinJTI (approved by an older version)
// never stands.
func approvalStands(rec *deviceRecord, g *azatauth.Grant) bool {
	return g.Usable() && rec.MinJTI != 0 && g.MinJTI == rec.MinJTI
}

// errApprovalWithdrawn: the grant was revoked since the approval.
var errApprovalWithdrawn = errors.New("the approval was withdrawn by a revocation or logout since")

// checkApproval reads the grant from storage (not the cache: a revocation
// at another instance counts at once) and tells whether rec still stands:
// nil, errApprovalWithdrawn, azatauth.ErrNoGrant, or a storage error.
func (o *OIDC) checkApproval(ctx context.Context, rec *deviceRecord) error {
	g, err := o.azat.Grants().LoadFresh(ctx, rec.GrantKey)
	switch {
	case err != nil:
		return err
	case !g.Usable():
		return azatauth.ErrNoGrant
	case !approvalStands(rec, g):
		return errApprovalWithdrawn
	}
	return nil
}

func (o *OIDC) deviceKey(deviceCode string) string {
	h := sha256.Sum256([]byte(deviceCode))
	return o.key("device/code/" + hex.EncodeToString(h[:]))
}

func (o *OIDC) userCodeKey(userCode string) string { return o.key("device/user/" + userCode) }

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
// It is unauthenticated: rate-limited per client IP and globally, and
// refused while maxPendingDeviceCodes records are in storage; a refused
// request stores nothing.
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
	ip := clientIP(r)
	if no := o.rt.device.allow(rateKey(ip), time.Now()); no != nil {
		if no.log {
			o.logger.Warn("device authorization refused: "+no.why, zap.String("remote", ip), zap.String("error", no.code))
		}
		w.Header().Set("Retry-After", retryAfter(no.retry))
		writeJSON(w, http.StatusTooManyRequests, oauthError{Error: no.code, ErrorDescription: "too many device authorization requests; retry later"})
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxDeviceForm)
	if err := r.ParseForm(); err != nil {
		o.logger.Info("device authorization: bad form", zap.String("remote", ip), errField(err))
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_request", ErrorDescription: "bad form"})
		return
	}
	raw := r.PostForm.Get("client_id")
	client := idp.Printable(raw, 64)
	if allowed := o.azat.DeviceClients(); len(allowed) > 0 && (client != raw || !slices.Contains(allowed, client)) {
		o.logger.Warn("device authorization refused: client name not in device_clients", zap.String("remote", ip), zap.String("client", client))
		writeJSON(w, http.StatusBadRequest, oauthError{Error: "invalid_client", ErrorDescription: "this client name may not start a device login here"})
		return
	}
	if client == "" {
		client = "a command-line client"
	}
	ctx := r.Context()
	room, err := o.pendingRoom(ctx)
	if err != nil {
		o.logger.Error("device authorization: storage", errField(err))
		writeJSON(w, http.StatusServiceUnavailable, oauthError{Error: "temporarily_unavailable"})
		return
	}
	if !room {
		o.logger.Warn("device authorization refused: pending codes at the cap", zap.String("remote", ip), zap.Int("cap", maxPendingDeviceCodes))
		w.Header().Set("Retry-After", retryAfter(time.Minute))
		writeJSON(w, http.StatusTooManyRequests, oauthError{Error: "temporarily_unavailable", ErrorDescription: "too many pending device logins; retry later"})
		return
	}
	now := time.Now()
	rec := deviceRecord{UserCode: newUserCode(), Client: client, Status: "pending",
		IP: ip, UserAgent: idp.Printable(r.UserAgent(), maxUserAgent), Created: now.Unix(),
		Expires: now.Add(deviceCodeLifetime).Unix(), Interval: int64(devicePollInterval / time.Second)}
	for range 3 { // a pending user code is never reused
		if !o.storage.Exists(ctx, o.userCodeKey(rec.UserCode)) {
			break
		}
		rec.UserCode = newUserCode()
	}
	deviceCode := seal.RandomString(32)
	err = o.storeDevice(ctx, deviceCode, &rec)
	if err == nil {
		if err = o.storage.Store(ctx, o.userCodeKey(rec.UserCode), []byte(o.deviceKey(deviceCode))); err != nil {
			_ = o.storage.Delete(ctx, o.deviceKey(deviceCode))
		}
	}
	if err != nil {
		o.logger.Error("device authorization: storage", errField(err))
		writeJSON(w, http.StatusServiceUnavailable, oauthError{Error: "temporarily_unavailable"})
		return
	}
	verify, sep := origin(r)+o.Routes+"/device", "?"
	if q := o.rt.providerQuery; q != "" {
		verify, sep = verify+"?"+q, "&"
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"device_code":               deviceCode,
		"user_code":                 formatUserCode(rec.UserCode),
		"verification_uri":          verify,
		"verification_uri_complete": verify + sep + "user_code=" + formatUserCode(rec.UserCode),
		"expires_in":                int(deviceCodeLifetime.Seconds()),
		"interval":                  rec.Interval,
	})
}

func (o *OIDC) storeDevice(ctx context.Context, deviceCode string, rec *deviceRecord) error {
	b, _ := json.Marshal(rec)
	return o.storage.Store(ctx, o.deviceKey(deviceCode), b)
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

// deleteDevice deletes a device record and its user code.
func (o *OIDC) deleteDevice(ctx context.Context, key string, rec *deviceRecord) {
	_ = o.storage.Delete(ctx, key)
	if normalizeUserCode(rec.UserCode) != "" { // never the whole device/user/ folder
		_ = o.storage.Delete(ctx, o.userCodeKey(rec.UserCode))
	}
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
	r.Body = http.MaxBytesReader(w, r.Body, maxDeviceForm)
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
	ctx, key := r.Context(), o.deviceKey(code)
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
		// The approval holds only while the grant was not revoked since:
		// checked before minting (no jti spent in vain) and again after
		// it, since a revocation may land in between (NextJTI would then
		// hand out a jti of the new window). The token is returned only
		// when both checks pass.
		err := o.checkApproval(ctx, rec)
		var m *azatauth.Minted
		if err == nil {
			m, err = o.azat.MintFor(ctx, rec.GrantKey, origin(r), o.azat.DeviceLifetime())
		}
		if err == nil {
			err = o.checkApproval(ctx, rec)
		}
		if err != nil {
			switch {
			case errors.Is(err, errApprovalWithdrawn):
				o.deleteDevice(ctx, key, rec)
				o.logger.Warn("device token refused: the user revoked their tokens or logged out after approving",
					zap.String("sub", rec.GrantKey), zap.String("client", rec.Client))
				fail(http.StatusBadRequest, "access_denied", "the approval was withdrawn: the user revoked their tokens or logged out since; start again")
			case errors.Is(err, azatauth.ErrNoGrant):
				o.deleteDevice(ctx, key, rec)
				o.logger.Warn("device token refused: no stored grant", zap.String("sub", rec.GrantKey), zap.String("client", rec.Client))
				fail(http.StatusBadRequest, "access_denied", "no stored login with offline access for this user")
			default:
				o.logger.Warn("device token: mint failed", errField(err))
				fail(http.StatusServiceUnavailable, "temporarily_unavailable", "")
			}
			return
		}
		o.deleteDevice(ctx, key, rec) // single use
		count(o.rt.m.mints, "success")
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
