// Package testlogin walks a provider's login pages with a plain HTTP client,
// without a browser: it follows redirects by hand, hands each page that is not
// a redirect to the provider's own code (which fills its form in), posts the
// form, and stops at the first redirect that leaves the provider after
// visiting it (the relying party's callback with code and state). It is the
// loop shared by testop.OP.Login and testdex.Dex.Login; what a login page
// looks like stays with each provider.
package testlogin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
)

// maxSteps bounds the requests of one walk (redirects and form posts).
const maxSteps = 20

// maxBody is how much of a page is read.
const maxBody = 1 << 20

// Page is a response of the walk that is not a redirect.
type Page struct {
	// URL is the URL that was requested.
	URL *url.URL
	// Method is the request's method: GET, or POST after a form was posted.
	Method string
	// Status is the response's status code.
	Status int
	// Body is the start of the response body (at most 1 MiB).
	Body []byte
	// OnProvider is whether URL has the scheme and host of the provider.
	OnProvider bool
}

// Posted is whether the page answers a form post.
func (p Page) Posted() bool { return p.Method == http.MethodPost }

// Walker is one provider's login walk.
type Walker struct {
	// Prefix starts every error the walk returns, e.g. "testop: login".
	Prefix string
	// Provider names the provider in the error for an OAuth error redirect,
	// e.g. "OP" or "dex".
	Provider string
	// Issuer is the provider's issuer URL; its scheme and host tell which
	// URLs are the provider's.
	Issuer string
	// Client makes the requests (nil: a new client with a cookie jar;
	// otherwise a copy of it with redirect following disabled, sharing its
	// Jar and Transport).
	Client *http.Client
	// Page is called with every response that is not a redirect. It returns
	// where to post form next (next is non-nil then), or an error that ends
	// the walk (returned as it is).
	Page func(p Page) (next *url.URL, form url.Values, err error)
}

// Walk starts at startURL (the provider's authorization URL or a relying
// party URL that redirects there) and returns the first URL that leaves the
// provider after visiting it, without requesting it. If that URL carries an
// OAuth error (error=...), it is returned together with a non-nil error.
func (w Walker) Walk(ctx context.Context, startURL string) (callbackURL string, err error) {
	var c http.Client
	if w.Client != nil {
		c = *w.Client
	}
	if c.Jar == nil {
		if c.Jar, err = cookiejar.New(nil); err != nil {
			return "", err
		}
	}
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

	issuer, err := url.Parse(w.Issuer)
	if err != nil {
		return "", err
	}
	cur, err := url.Parse(startURL)
	if err != nil {
		return "", err
	}
	var form url.Values
	visited := false
	for range maxSteps {
		onProvider := cur.Scheme == issuer.Scheme && cur.Host == issuer.Host
		if !onProvider && visited {
			if q := cur.Query(); q.Get("error") != "" {
				return cur.String(), fmt.Errorf("%s: %s redirected with error %q: %s", w.Prefix, w.Provider, q.Get("error"), q.Get("error_description"))
			}
			return cur.String(), nil
		}
		visited = visited || onProvider

		var req *http.Request
		if form != nil {
			req, err = http.NewRequestWithContext(ctx, http.MethodPost, cur.String(), strings.NewReader(form.Encode()))
			if req != nil {
				req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			}
		} else {
			req, err = http.NewRequestWithContext(ctx, http.MethodGet, cur.String(), nil)
		}
		if err != nil {
			return "", err
		}
		form = nil
		resp, err := c.Do(req)
		if err != nil {
			return "", fmt.Errorf("%s: %w", w.Prefix, err)
		}
		body, _ := io.ReadAll(io.LimitReader(resp.Body, maxBody))
		resp.Body.Close()

		if resp.StatusCode >= 300 && resp.StatusCode < 400 {
			loc, err := resp.Location()
			if err != nil {
				return "", fmt.Errorf("%s: %s %s: %d without usable Location: %v", w.Prefix, req.Method, cur, resp.StatusCode, err)
			}
			cur = loc
			continue
		}
		next, f, err := w.Page(Page{URL: cur, Method: req.Method, Status: resp.StatusCode, Body: body, OnProvider: onProvider})
		if err != nil {
			return "", err
		}
		cur, form = next, f
	}
	return "", errors.New(w.Prefix + ": too many redirects")
}
