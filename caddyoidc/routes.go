package caddyoidc

import (
	"net/http"
	"net/url"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// serveRoute dispatches <routes>/<route>.
func (o *OIDC) serveRoute(w http.ResponseWriter, r *http.Request, route string, next caddyhttp.Handler) error {
	p := o.rt.disc.Get(r.Context())
	if p == nil {
		o.writeError(w, r, http.StatusServiceUnavailable, "temporarily_unavailable", "the identity provider is not reachable yet")
		return nil
	}
	if o.BearerOnly && browserRoutes[route] {
		o.writeError(w, r, http.StatusNotFound, "not_found", "this provider offers no login")
		return nil
	}
	switch route {
	case "login":
		o.serveLogin(w, r, p)
	case "callback":
		o.serveCallback(w, r, p)
	case "refresh":
		o.serveRefresh(w, r, p)
	case "logout":
		o.serveLogout(w, r, p)
	case "logged-out":
		serveLoggedOut(w, r, o.Routes+"/login")
	case "userinfo":
		o.serveUserinfo(w, r, p)
	case "token":
		o.serveToken(w, r, p)
	case "device/code":
		o.serveDeviceCode(w, r)
	case "device/token":
		o.serveDeviceToken(w, r)
	case "device":
		o.serveDevice(w, r, p)
	case "backchannel-logout":
		o.serveBackchannelLogout(w, r, p)
	case "revoke":
		o.serveRevoke(w, r, p)
	default:
		o.writeError(w, r, http.StatusNotFound, "not_found", "no such route")
	}
	return nil
}

// browserRoutes are the routes of a login; a bearer_only provider has none.
var browserRoutes = map[string]bool{
	"login": true, "callback": true, "refresh": true, "logout": true,
	"device": true, "device/code": true, "device/token": true,
}

// sameOrigin refuses cross-site requests: with fetch metadata the browser
// must say same-origin (or none: typed by the user); else an Origin header,
// when present, must be this host, and https when the request came over
// TLS (a page of http://<this host> is another origin; without TLS here, a
// proxy in front may have ended it, so either scheme passes). Requests with
// neither (curl) pass: they carry no ambient browser credentials of a
// victim.
func sameOrigin(r *http.Request) bool {
	if site := r.Header.Get("Sec-Fetch-Site"); site != "" {
		return site == "same-origin" || site == "none"
	}
	if o := r.Header.Get("Origin"); o != "" {
		u, err := url.Parse(o)
		return err == nil && u.Host == r.Host && (r.TLS == nil || u.Scheme == "https")
	}
	return true
}
