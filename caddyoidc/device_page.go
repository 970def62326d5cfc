package caddyoidc

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
)

// The approval page (RFC 8628 §5.4): it shows what the requester declared
// (client name) apart from what the proxy saw (IP, time, User-Agent), and
// Approve requires the user to type the code their device shows, even when
// the link (verification_uri_complete) named one: a phishing link alone
// never gets a click-through approval.

var devicePage = template.Must(template.New("device").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Device login</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head>
<body style="font-family:sans-serif;max-width:40em;margin:3em auto">
<h1>Connect a device</h1>
{{if .Message}}<p id="message"><b>{{.Message}}</b></p>{{end}}
{{if .Client}}
<p>A device asks for a token to act as <b id="user">{{.User}}</b>, valid <span id="lifetime">{{.Lifetime}}</span>.
Approve only if you started this yourself, just now, on a device you control.</p>
<table>
<tr><th align="left">Client name</th><td><b id="client">{{.Client}}</b> <i id="client_note">({{.ClientNote}})</i></td></tr>
<tr><th align="left">Requested from IP</th><td id="ip">{{.IP}}</td></tr>
<tr><th align="left">Requested at</th><td id="time">{{.Time}}</td></tr>
<tr><th align="left">User agent</th><td id="user_agent">{{.UserAgent}}</td></tr>
</table>
<form method="post" action="{{.Action}}">
{{if .Prefilled}}<p>The link you opened names the code <b id="code">{{.Code}}</b>. It may come from someone else:
type the code <b>your device shows</b> to confirm.</p>{{end}}
<p><label>Code shown by your device: <input name="confirm_code" id="confirm_code" value="{{.Confirm}}" autocomplete="off" autocapitalize="characters" spellcheck="false"></label></p>
<input type="hidden" name="user_code" value="{{.Code}}"><input type="hidden" name="csrf" value="{{.CSRF}}">
<button type="submit" name="action" value="approve" id="approve">Approve</button>
<button type="submit" name="action" value="deny" id="deny">Deny</button>
</form>
{{else if not .Done}}
<form method="post" action="{{.Action}}">
<label>Code shown by your device: <input name="user_code" id="user_code" value="{{.Code}}" autocomplete="off" autocapitalize="characters" spellcheck="false"></label>
<input type="hidden" name="csrf" value="{{.CSRF}}">{{if .FromLink}}<input type="hidden" name="from_link" value="1">{{end}}
<button type="submit" name="action" value="lookup" id="continue">Continue</button>
</form>
{{end}}
</body></html>`))

type devicePageData struct {
	Message, Client, ClientNote, User, Code, Confirm, CSRF, Action, Lifetime string
	IP, Time, UserAgent                                                      string
	// FromLink: the lookup form holds a code from a link, not typed by
	// the user; its Continue shows the request with an empty confirmation.
	Prefilled, Done, FromLink bool
}

// deviceCSRF is the approval form's token, bound to the session and the
// user code ("" for the lookup form).
func (o *OIDC) deviceCSRF(sid, code string) string {
	return o.rt.sealer.Seal([]byte(sid+"\x00"+code), "device-csrf")
}

func (o *OIDC) checkDeviceCSRF(tok, sid, code string) bool {
	pt, err := o.rt.sealer.Open(tok, "device-csrf")
	return err == nil && subtle.ConstantTimeCompare(pt, []byte(sid+"\x00"+code)) == 1
}

// serveDevice is the browser side: look the code up, show the request, then
// approve (with the typed code) or deny.
//
//   - GET without user_code: the lookup form (a same-origin POST).
//   - GET ?user_code= (verification_uri_complete): the request, with an
//     empty confirmation field. Any site can make the browser send it, so
//     it never spends the wrong-code budget: a miss counts in the links
//     budget, and once that is spent the link shows the lookup form with
//     the code filled in (from_link) instead of looking it up.
//   - POST action=lookup: the request, the confirmation field holding the
//     code the user just typed on this site (empty with from_link).
//   - POST action=approve|deny: the decision; approve needs confirm_code to
//     equal user_code, and records the grant's current MinJTI: a
//     revocation or logout before the CLI's poll withdraws the approval.
//
// In CSRF-checked POSTs, a lookup of a code that is not pending and an
// approval whose typed code differs are wrong codes, limited per user (see
// device_tries.go).
func (o *OIDC) serveDevice(w http.ResponseWriter, r *http.Request, p *provider) {
	if o.azat == nil || !o.azat.CanMint() {
		o.writeError(w, r, http.StatusNotFound, "not_found", "this site has no azat block")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodPost {
		w.Header().Set("Allow", "GET, POST")
		o.writeError(w, r, http.StatusMethodNotAllowed, "invalid_request", "GET or POST")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxDeviceForm)
	if err := r.ParseForm(); err != nil {
		status := http.StatusBadRequest
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			status = http.StatusRequestEntityTooLarge
		}
		o.logger.Warn("device page: bad form", zap.Int("status", status), zap.String("remote", clientIP(r)), errField(err))
		o.writeError(w, r, status, "invalid_request", "form too large or malformed")
		return
	}
	s, err := o.loadSession(r)
	if err != nil {
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "sessions are unavailable")
		return
	}
	now := time.Now()
	if s == nil || !s.usable(now) {
		if r.Method != http.MethodGet {
			o.writeError(w, r, http.StatusUnauthorized, "unauthorized", "log in first")
			return
		}
		http.Redirect(w, r, o.loginURL(r, r.URL.RequestURI()), http.StatusFound)
		return
	}
	formURL := o.Routes + "/device"
	if q := o.rt.providerQuery; q != "" {
		formURL += "?" + q
	}
	data := devicePageData{Action: formURL, User: s.Identity.PreferredUsername,
		Lifetime: o.azat.DeviceLifetime().String()}
	if data.User == "" {
		data.User = s.Identity.Subject
	}
	page := func(status int) {
		pageHeaders(w, "'self'")
		w.WriteHeader(status)
		_ = devicePage.Execute(w, data)
	}
	raw := r.Form.Get("user_code")
	action := ""
	if r.Method == http.MethodPost {
		action = r.PostForm.Get("action")
		bound := normalizeUserCode(raw)
		if action == "lookup" {
			bound = ""
		}
		if !sameOrigin(r) || !o.checkDeviceCSRF(r.PostForm.Get("csrf"), s.ID, bound) {
			o.logger.Warn("device page refused: cross-site or bad csrf token", zap.String("remote", clientIP(r)))
			o.writeError(w, r, http.StatusForbidden, "invalid_request", "cross-site request refused")
			return
		}
		switch action {
		case "lookup", "approve", "deny":
		default:
			o.writeError(w, r, http.StatusBadRequest, "invalid_request", "lookup, approve or deny")
			return
		}
	}
	if r.Method == http.MethodGet && raw == "" {
		data.CSRF = o.deviceCSRF(s.ID, "")
		page(http.StatusOK)
		return
	}

	// From here a code is submitted: the user's wrong-code counter is
	// checked and updated under its lock, across instances.
	ctx := r.Context()
	tk := o.triesKey(s)
	if err := o.storage.Lock(ctx, tk+".lock"); err != nil {
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "storage is unavailable")
		return
	}
	defer o.storage.Unlock(context.WithoutCancel(ctx), tk+".lock") //nolint:errcheck
	tries, err := o.loadTries(ctx, tk, now)
	if err != nil {
		o.logger.Error("device page: storage", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "storage is unavailable")
		return
	}
	if out, wait := tries.exhausted(now); out && action != "deny" {
		o.logger.Warn("device page refused: too many wrong codes", zap.String("sub", s.Identity.Subject), zap.String("remote", clientIP(r)))
		w.Header().Set("Retry-After", retryAfter(wait))
		data.Message = "Too many wrong codes. Wait " + retryAfter(wait) + " seconds."
		data.Done = true
		page(http.StatusTooManyRequests)
		return
	}
	link := action == "" // GET ?user_code=: any site can send it
	if link && tries.linksSpent() {
		o.logger.Info("device page: link lookups spent; the user confirms the code with Continue",
			zap.String("sub", s.Identity.Subject), zap.String("remote", clientIP(r)))
		data.Code, data.FromLink = idp.Printable(raw, 16), true
		if c := normalizeUserCode(raw); c != "" {
			data.Code = formatUserCode(c)
		}
		data.CSRF = o.deviceCSRF(s.ID, "")
		data.Message = "Check that this is the code your device shows, then press Continue."
		page(http.StatusOK)
		return
	}
	wrong := func(msg string) {
		if err := o.addTry(ctx, tk, tries, now, link); err != nil {
			o.logger.Error("device page: storing a wrong code", errField(err))
			o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "storage is unavailable")
			return
		}
		o.logger.Info("device page: wrong code", zap.String("sub", s.Identity.Subject), zap.String("remote", clientIP(r)),
			zap.Bool("from_link", link), zap.Int("wrong_codes", len(tries.Times)), zap.Int("link_misses", len(tries.Links)))
		data.Message = msg
		page(http.StatusBadRequest)
	}

	code := normalizeUserCode(raw)
	var rec *deviceRecord
	var key string
	if code != "" {
		b, err := o.storage.Load(ctx, o.userCodeKey(code))
		if err == nil {
			key = string(b)
			rec, _ = o.loadDevice(ctx, key)
		}
	}
	if rec != nil && now.Unix() >= rec.Expires {
		o.deleteDevice(ctx, key, rec) // expired: collected when touched
		rec = nil
	}
	if rec == nil || rec.Status != "pending" {
		if action == "approve" || action == "deny" {
			// The form's token names this code: not a guess.
			data.Message, data.Done = "This request has expired or was already decided. Start again on your device.", true
			page(http.StatusBadRequest)
			return
		}
		data.Code = idp.Printable(raw, 16)
		data.CSRF = o.deviceCSRF(s.ID, "")
		wrong("Unknown or expired code. Check the code your device shows, or start again there.")
		return
	}
	data.Code, data.Client = formatUserCode(code), rec.Client
	data.ClientNote = "self-declared by the requester, not verified"
	if len(o.azat.DeviceClients()) > 0 {
		data.ClientNote = "self-declared by the requester: one of the names this site allows, not verified"
	}
	data.IP, data.UserAgent, data.Time = rec.IP, rec.UserAgent, "unknown"
	if data.IP == "" {
		data.IP = "unknown"
	}
	if data.UserAgent == "" {
		data.UserAgent = "none sent"
	}
	if rec.Created != 0 {
		t := time.Unix(rec.Created, 0)
		data.Time = t.UTC().Format("2006-01-02 15:04:05 UTC") + " (" + now.Sub(t).Round(time.Second).String() + " ago)"
	}
	data.CSRF = o.deviceCSRF(s.ID, code)
	switch action {
	case "":
		data.Prefilled = true // from a link: the user types the code
		page(http.StatusOK)
		return
	case "lookup":
		if r.PostForm.Get("from_link") != "" {
			data.Prefilled = true // the code came from a link: the user types it
		} else {
			data.Confirm = data.Code // typed by the user on this site just now
		}
		page(http.StatusOK)
		return
	case "approve":
		if normalizeUserCode(r.PostForm.Get("confirm_code")) != code {
			data.Prefilled = true
			wrong("The code you typed is not this request's code. If your device shows another code, this request is not yours: Deny it.")
			return
		}
		if s.GrantKey == "" {
			data.Client, data.Done = "", true
			data.Message = "Your login has no offline access, so no long-lived token can be issued. Log out, log in again allowing offline access, and retry."
			page(http.StatusConflict)
			return
		}
	}
	var minJTI uint64
	if action == "approve" {
		// The approval holds for the grant's current jti window: a
		// revocation (POST <routes>/revoke, logout, back-channel logout,
		// invalid_grant) before the CLI's poll moves MinJTI and withdraws it.
		g, err := o.azat.Grants().LoadFresh(ctx, s.GrantKey)
		if err != nil {
			o.logger.Error("device page: grant store", errField(err))
			o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "storage is unavailable")
			return
		}
		if !g.Usable() {
			data.Client, data.Done = "", true
			data.Message = "Your stored login has ended (logged out or revoked), so no long-lived token can be issued. Log out, log in again allowing offline access, and retry."
			page(http.StatusConflict)
			return
		}
		minJTI = g.MinJTI
	}
	if err := o.decideDevice(ctx, key, action, s.GrantKey, minJTI); err != nil {
		if errors.Is(err, errNotPending) {
			data.Message, data.Client, data.Done = "This request has expired or was already decided. Start again on your device.", "", true
			page(http.StatusBadRequest)
			return
		}
		o.logger.Error("device page: storage", errField(err))
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "could not save")
		return
	}
	if action == "approve" {
		rec.Status = "approved"
	} else {
		rec.Status = "denied"
	}
	o.logger.Info("device flow "+rec.Status, zap.String("sub", s.Identity.Subject), zap.String("client", rec.Client),
		zap.String("requester_ip", rec.IP))
	data.Client, data.Done = "", true
	if rec.Status == "approved" {
		data.Message = "Approved. You can return to your device."
	} else {
		data.Message = "Denied. Nothing was issued."
	}
	page(http.StatusOK)
}

var errNotPending = errors.New("device request not pending")

// decideDevice records approve (with the user's grant and its MinJTI) or
// deny on a pending record, under the lock the token route's polls take, so
// that a poll writing its time never overwrites the decision.
func (o *OIDC) decideDevice(ctx context.Context, key, action, grantKey string, minJTI uint64) error {
	if err := o.storage.Lock(ctx, key+".lock"); err != nil {
		return err
	}
	defer o.storage.Unlock(context.WithoutCancel(ctx), key+".lock") //nolint:errcheck
	rec, err := o.loadDevice(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return errNotPending
	}
	if err != nil {
		return err
	}
	if rec.Status != "pending" || time.Now().Unix() >= rec.Expires {
		return errNotPending
	}
	if action == "approve" {
		rec.Status, rec.GrantKey, rec.MinJTI = "approved", grantKey, minJTI
	} else {
		rec.Status = "denied"
	}
	b, _ := json.Marshal(rec)
	return o.storage.Store(ctx, key, b)
}
