package idp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// maxIdPBody bounds every response body read from the provider, so that a
// hostile or broken provider cannot exhaust memory.
const maxIdPBody = 1 << 20

// NewHTTPClient returns the HTTP client for all calls to the provider: bounded
// in time (timeout) and in response size (maxIdPBody).
func NewHTTPClient(timeout time.Duration) *http.Client {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   timeout,
		ResponseHeaderTimeout: timeout,
		MaxIdleConnsPerHost:   16,
		IdleConnTimeout:       90 * time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{
		Timeout:   timeout,
		Transport: limitedTransport{tr},
		// The provider's endpoints must not redirect us elsewhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type limitedTransport struct{ http.RoundTripper }

func (t limitedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := t.RoundTripper.RoundTrip(r)
	if err != nil {
		return nil, err
	}
	resp.Body = &limitedBody{rc: resp.Body, left: maxIdPBody}
	return resp, nil
}

// ErrBodyTooLarge: the provider answered more than maxIdPBody bytes.
var ErrBodyTooLarge = errors.New("identity provider response too large")

type limitedBody struct {
	rc   io.ReadCloser
	left int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, ErrBodyTooLarge
	}
	if int64(len(p)) > b.left {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		return n + int(b.left), ErrBodyTooLarge
	}
	return n, err
}

func (b *limitedBody) Close() error { return b.rc.Close() }

// ErrUnavailable wraps every failure that says nothing about the token or
// the credentials: the provider could not be reached, timed out, answered
// 5xx, temporarily_unavailable, or something unreadable. A caller keeps
// what it has (a session, a cached answer) and retries later.
var ErrUnavailable = errors.New("identity provider unavailable")

// OAuthError is a definite refusal: the provider answered a 4xx with an
// OAuth error (RFC 6749 §5.2), or a 4xx without one (Code is "").
type OAuthError struct {
	Status      int
	Code        string `json:"error"`
	Description string `json:"error_description"`
}

func (e *OAuthError) Error() string {
	if e.Code == "" {
		return fmt.Sprintf("provider refused: status %d", e.Status)
	}
	// The description is the provider's text: bounded, never a token.
	return fmt.Sprintf("provider refused: %s (status %d): %.120q", e.Code, e.Status, e.Description)
}

// clientAuth says how a request authenticates the client.
type clientAuth int

const (
	authNone   clientAuth = iota // no client authentication (userinfo, tokeninfo)
	authClient                   // the client's credentials: Basic, client_secret_post, or client_id alone for a public client
	authBasic                    // HTTP Basic only (introspection, RFC 7662 §2.1)
)

// post sends form to endpoint, authenticated as auth says, and decodes the
// JSON answer into out. It is the one place where a call to the provider
// is made with a form: every error is either *OAuthError (a 4xx) or wraps
// ErrUnavailable.
func (c *Client) post(ctx context.Context, endpoint string, form url.Values, auth clientAuth, out any) error {
	switch {
	case auth == authNone:
	case c.cfg.ClientSecret == "":
		form.Set("client_id", c.cfg.ClientID)
	case auth == authClient && c.postSecret:
		form.Set("client_id", c.cfg.ClientID)
		form.Set("client_secret", c.cfg.ClientSecret)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if auth != authNone && c.cfg.ClientSecret != "" && (auth == authBasic || !c.postSecret) {
		// RFC 6749 §2.3.1: both form-encoded before Basic.
		req.SetBasicAuth(url.QueryEscape(c.cfg.ClientID), url.QueryEscape(c.cfg.ClientSecret))
	}
	return do(c.cfg.HTTP, req, out)
}

// getJSON GETs url (with bearer, when set) and decodes the JSON answer.
func getJSON(ctx context.Context, client *http.Client, u, bearer string, out any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	return do(client, req, out)
}

// do sends req and decodes a 200's JSON body into out (nil: the body is
// discarded). A 4xx is *OAuthError, anything else ErrUnavailable.
func do(client *http.Client, req *http.Request, out any) error {
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("%w: reading the answer: %w", ErrUnavailable, err)
	}
	if resp.StatusCode >= 400 && resp.StatusCode < 500 {
		e := &OAuthError{Status: resp.StatusCode}
		_ = json.Unmarshal(body, e)
		e.Status = resp.StatusCode
		if e.Code == "temporarily_unavailable" {
			return fmt.Errorf("%w: %v", ErrUnavailable, e)
		}
		return e
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: status %d", ErrUnavailable, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	if ct, _, _ := mime.ParseMediaType(resp.Header.Get("Content-Type")); ct == "application/jwt" {
		return errors.New("signed (application/jwt) answers are not supported")
	}
	if err := json.Unmarshal(body, out); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}
