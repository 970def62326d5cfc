package testop

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"html/template"
	"io"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"

	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/caddy-oidc/caddy-oidc/internal/testlogin"
)

// ServeHTTP counts requests, applies the injected faults and hands the request
// to the OP's router.
func (o *OP) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	isToken := r.URL.Path == PathToken
	if isToken {
		// Read the form without consuming it: the OP parses it again.
		var grant string
		if r.Body != nil {
			b, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			r.Body.Close()
			r.Body = io.NopCloser(bytes.NewReader(b))
			if vals, err := url.ParseQuery(string(b)); err == nil {
				grant = vals.Get("grant_type")
			}
		}
		if grant == "" {
			grant = r.URL.Query().Get("grant_type")
		}
		o.count(r.URL.Path, &grant)
		defer func() {
			o.countMu.Lock()
			o.tokenTime[grant] += time.Since(start)
			o.countMu.Unlock()
		}()
	} else {
		o.count(r.URL.Path, nil)
	}

	if o.drop.Load() {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		panic(http.ErrAbortHandler)
	}
	if o.down.Load() {
		writeOAuthError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "testop: OP is down")
		return
	}
	if !sleep(r.Context(), time.Duration(o.delay.Load())) {
		return
	}
	if isToken {
		if !sleep(r.Context(), time.Duration(o.tokenDelay.Load())) {
			return
		}
		if status, fail := o.takeTokenFailure(); fail {
			code := "server_error"
			if status == http.StatusServiceUnavailable {
				code = "temporarily_unavailable"
			}
			writeOAuthError(w, status, code, "testop: injected token endpoint failure")
			return
		}
	}

	o.jwksHeaders(w, r)
	if o.hideEndSes && r.URL.Path == "/.well-known/openid-configuration" {
		o.serveDiscoveryWithout(w, r, "end_session_endpoint")
		return
	}
	if o.logger == nil {
		o.handler.ServeHTTP(w, r)
		return
	}
	rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
	o.handler.ServeHTTP(rec, r)
	o.logger.InfoContext(r.Context(), "http request",
		"method", r.Method, "path", r.URL.Path, "status", rec.status, "duration", time.Since(start))
}

func (o *OP) count(path string, grant *string) {
	o.countMu.Lock()
	defer o.countMu.Unlock()
	o.requests[path]++
	if grant != nil {
		o.tokenCalls[*grant]++
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func writeOAuthError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":%q,"error_description":%q}`, code, desc)
}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// routes mirrors exampleop.SetupServer: a logged-out page, the username /
// password login UI under /login/, and the OP on "/". (exampleop's login
// router is unexported and SetupServer calls slog.SetDefault and log.Fatal,
// hence this small copy.)
func (o *OP) routes() http.Handler {
	mux := http.NewServeMux()
	issuerInterceptor := op.NewIssuerInterceptor(o.provider.IssuerFromRequest)
	callback := op.AuthCallbackURL(o.provider)

	mux.HandleFunc("GET "+PathLogin, func(w http.ResponseWriter, r *http.Request) {
		// the OP passes the id of the auth request as query parameter
		renderLogin(w, http.StatusOK, r.FormValue("authRequestID"), "")
	})
	mux.HandleFunc("POST "+PathLogin, issuerInterceptor.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil {
			http.Error(w, "cannot parse form: "+err.Error(), http.StatusBadRequest)
			return
		}
		id := r.FormValue("id")
		if err := o.store.CheckUsernamePassword(r.FormValue("username"), r.FormValue("password"), id); err != nil {
			renderLogin(w, http.StatusUnauthorized, id, err.Error())
			return
		}
		http.Redirect(w, r, callback(r.Context(), id), http.StatusFound)
	}))
	mux.HandleFunc(PathLoggedOut, func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("signed out successfully"))
	})
	mux.Handle("/", o.provider)
	return mux
}

var loginTemplate = template.Must(template.New("login").Parse(`<!DOCTYPE html>
<html>
<head><meta charset="UTF-8"><title>Login - test OP</title></head>
<body style="display: flex; align-items: center; justify-content: center; height: 100vh; font-family: sans-serif;">
<form method="POST" action="` + PathLogin + `" style="width: 280px;">
<input type="hidden" name="id" value="{{.ID}}">
<div><label for="username">Username:</label><input id="username" name="username" value="{{.Username}}" style="width: 100%"></div>
<div><label for="password">Password:</label><input id="password" name="password" type="password" style="width: 100%"></div>
<p class="error" style="color:red; min-height: 1rem;">{{.Error}}</p>
<button type="submit">Login</button>
<p style="color: #666; font-size: small;">Test users: {{.Username}} / {{.Password}}, {{.Username2}} / {{.Password2}}</p>
</form>
</body>
</html>
`))

func renderLogin(w http.ResponseWriter, status int, id, errMsg string) {
	var buf bytes.Buffer
	err := loginTemplate.Execute(&buf, map[string]string{
		"ID": id, "Error": errMsg,
		"Username": Username, "Password": Password,
		"Username2": Username2, "Password2": Password2,
	})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	w.Write(buf.Bytes())
}

var (
	hiddenIDRe = regexp.MustCompile(`name="id" value="([^"]*)"`)
	loginErrRe = regexp.MustCompile(`<p class="error"[^>]*>([^<]*)</p>`)
)

// LoginAndGetCallback logs the default user in; see Login.
func (o *OP) LoginAndGetCallback(ctx context.Context, authorizeURL string) (callbackURL string, err error) {
	return o.Login(ctx, nil, authorizeURL, Username, Password)
}

// Login drives a login without a browser. startURL is either the OP's
// authorize URL or an RP URL that redirects there. Redirects are followed
// with client (nil: a new client with a cookie jar; otherwise a copy of it
// with redirect following disabled, sharing its Jar and Transport), the login
// form is submitted with username / password, and the first redirect that
// leaves the OP after visiting it (the RP's callback with code and state) is
// returned without being followed.
//
// If the OP redirects back with an OAuth error (error=...), the callback URL
// is returned together with a non-nil error. A rejected password yields an
// error mentioning "username or password wrong".
func (o *OP) Login(ctx context.Context, client *http.Client, startURL, username, password string) (callbackURL string, err error) {
	w := testlogin.Walker{Prefix: "testop: login", Provider: "OP", Issuer: o.Issuer, Client: client}
	w.Page = func(p testlogin.Page) (*url.URL, url.Values, error) {
		if p.Status == http.StatusOK && p.OnProvider && p.URL.Path == PathLogin && !p.Posted() {
			m := hiddenIDRe.FindSubmatch(p.Body)
			if m == nil {
				return nil, nil, fmt.Errorf("testop: login: no auth request id in login page %s", p.URL)
			}
			form := url.Values{
				"id":       {html.UnescapeString(string(m[1]))},
				"username": {username},
				"password": {password},
			}
			return p.URL.ResolveReference(&url.URL{Path: PathLogin}), form, nil
		}
		msg := strings.TrimSpace(string(p.Body))
		if m := loginErrRe.FindSubmatch(p.Body); m != nil {
			msg = html.UnescapeString(string(m[1]))
		}
		if len(msg) > 500 {
			msg = msg[:500] + "..."
		}
		return nil, nil, fmt.Errorf("testop: login: %s %s: status %d: %s", p.Method, p.URL, p.Status, msg)
	}
	return w.Walk(ctx, startURL)
}
