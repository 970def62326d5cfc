package testdex

import (
	"context"
	"errors"
	"fmt"
	"html"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/caddy-oidc/caddy-oidc/internal/testlogin"
)

// ErrInvalidCredentials: dex showed its login form again with "Invalid Email
// Address and password." (Login's error wraps it).
var ErrInvalidCredentials = errors.New("dex refused the email or password")

// Login drives a login without a browser, like testop.OP.Login. startURL is
// dex's authorization URL or an RP URL that redirects there (e.g. Caddy's
// /auth/login?back=...). Redirects are followed with client (nil: a new
// client with a cookie jar; otherwise a copy of it with redirect following
// disabled, sharing its Jar and Transport). On dex, the redirect chain is
// /auth -> /auth/local -> /auth/local/login?state=<auth request>, whose
// form (fields "login" and "password", posted to the form's action) is
// submitted with username (a user's email) and password. With
// Options.ShowApprovalScreen the approval form is then submitted with
// approval=approve. The first redirect that leaves dex after visiting it
// (the RP's callback with code and state) is returned without being followed.
//
// If dex redirects back with an OAuth error (error=...), the callback URL is
// returned together with a non-nil error. A refused password yields an error
// wrapping ErrInvalidCredentials; a dex error page (unknown client,
// redirect_uri not registered, unknown scope, ...) an error with its message.
func (d *Dex) Login(ctx context.Context, client *http.Client, startURL, username, password string) (callbackURL string, err error) {
	submittedPassword := false
	w := testlogin.Walker{Prefix: "testdex: login", Provider: "dex", Issuer: d.issuer, Client: client}
	w.Page = func(p testlogin.Page) (*url.URL, url.Values, error) {
		page := string(p.Body)
		switch {
		case p.OnProvider && p.Posted() && submittedPassword && strings.Contains(page, `id="login-error"`):
			return nil, nil, fmt.Errorf("testdex: login: %s as %q: %w (status %d)", p.URL.Path, username, ErrInvalidCredentials, p.Status)
		case p.OnProvider && p.Status == http.StatusOK && !p.Posted() && strings.Contains(page, `name="login"`):
			f, ok := firstForm(page)
			if !ok {
				return nil, nil, fmt.Errorf("testdex: login: no form in dex's login page %s", p.URL)
			}
			target, err := p.URL.Parse(f.action)
			if err != nil {
				return nil, nil, fmt.Errorf("testdex: login: form action %q: %v", f.action, err)
			}
			f.fields.Set("login", username)
			f.fields.Set("password", password)
			submittedPassword = true
			return target, f.fields, nil
		case p.OnProvider && p.Status == http.StatusOK && !p.Posted() && strings.Contains(page, `name="approval"`):
			f, ok := firstForm(page)
			if !ok || f.fields.Get("approval") != "approve" {
				return nil, nil, fmt.Errorf("testdex: login: no approve form in dex's approval page %s", p.URL)
			}
			target, err := p.URL.Parse(f.action) // no action: the page's own URL (with req and hmac)
			if err != nil {
				return nil, nil, fmt.Errorf("testdex: login: form action %q: %v", f.action, err)
			}
			return target, f.fields, nil
		default:
			return nil, nil, fmt.Errorf("testdex: login: %s %s: status %d: %s", p.Method, p.URL, p.Status, pageMessage(page))
		}
	}
	return w.Walk(ctx, startURL)
}

type htmlForm struct {
	action string
	fields url.Values // the form's inputs that have a name and a value
}

var (
	formRe   = regexp.MustCompile(`(?is)<form\b([^>]*)>(.*?)</form>`)
	inputRe  = regexp.MustCompile(`(?is)<input\b([^>]*)>`)
	attrRe   = regexp.MustCompile(`(?is)\b([a-z-]+)\s*=\s*"([^"]*)"`)
	titleRe  = regexp.MustCompile(`(?is)<h2 class="theme-heading">(.*?)</h2>`)
	paraRe   = regexp.MustCompile(`(?is)<p>(.*?)</p>`)
	tagRe    = regexp.MustCompile(`(?s)<[^>]*>`)
	spacesRe = regexp.MustCompile(`\s+`)
)

func attrs(s string) map[string]string {
	m := map[string]string{}
	for _, a := range attrRe.FindAllStringSubmatch(s, -1) {
		m[strings.ToLower(a[1])] = html.UnescapeString(a[2])
	}
	return m
}

// firstForm parses the first <form> of a dex page (dex's templates, not
// arbitrary HTML).
func firstForm(page string) (htmlForm, bool) {
	m := formRe.FindStringSubmatch(page)
	if m == nil {
		return htmlForm{}, false
	}
	f := htmlForm{action: attrs(m[1])["action"], fields: url.Values{}}
	for _, in := range inputRe.FindAllStringSubmatch(m[2], -1) {
		a := attrs(in[1])
		if name, ok := a["name"]; ok && name != "" {
			if v, ok := a["value"]; ok {
				f.fields.Set(name, v)
			}
		}
	}
	return f, true
}

// pageMessage is the heading and message of a dex error page, or the start of
// the body.
func pageMessage(page string) string {
	var parts []string
	for _, re := range []*regexp.Regexp{titleRe, paraRe} {
		if m := re.FindStringSubmatch(page); m != nil {
			parts = append(parts, strings.TrimSpace(html.UnescapeString(tagRe.ReplaceAllString(m[1], ""))))
		}
	}
	if len(parts) > 0 {
		return strings.Join(parts, ": ")
	}
	msg := strings.TrimSpace(spacesRe.ReplaceAllString(tagRe.ReplaceAllString(page, " "), " "))
	if len(msg) > 500 {
		msg = msg[:500] + "..."
	}
	return msg
}
