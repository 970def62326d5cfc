package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "oidc-login",
		Usage: "[--print] [--force] [--insecure] [--client-id <name>] [--routes /auth] [--provider <name>] <site-url>",
		Short: "Logs in to a site protected by the oidc handler and stores a long-lived token (AZAT)",
		Long: `
Runs the device authorization flow (RFC 8628) against a site whose oidc
handler has an azat block: prints a URL and a code, waits while you approve
in a browser, then stores the token in your config directory
(<config dir>/caddy-oidc/tokens.json, mode 0600).

With --print, writes the token to standard output (reusing a stored token that
is valid for at least another hour unless --force), so that

  curl -H "Authorization: Bearer $(caddy oidc-login --print https://site)" https://site/api

works in scripts. Messages go to standard error.

The site URL must be https://: over plain http the device code and the
token travel unencrypted. --insecure allows http:// (for a test site,
loopback included).`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.Flags().Bool("print", false, "print the token on standard output")
			cmd.Flags().Bool("force", false, "log in again even if a valid token is stored")
			cmd.Flags().Bool("insecure", false, "allow an http:// site (the token travels unencrypted)")
			cmd.Flags().String("client-id", "caddy oidc-login", "name shown to the user when approving")
			cmd.Flags().String("routes", defaultRoutes, "the site's oidc routes prefix")
			cmd.Flags().String("provider", "", "the provider to log in at, on a site with several (default: the site's default provider)")
			cmd.Args = cobra.ExactArgs(1)
			cmd.RunE = caddycmd.WrapCommandFuncForCobra(cmdOIDCLogin)
		},
	})
}

// checkSiteURL returns the site URL without a trailing slash, or why it
// cannot be used: not an absolute http(s) URL, or http:// without insecure
// (loopback included: the rule is simple, and --insecure says it).
func checkSiteURL(raw string, insecure bool) (string, error) {
	site := strings.TrimSuffix(raw, "/")
	u, err := url.Parse(site)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
		return "", fmt.Errorf("%q is not an https:// site URL", raw)
	}
	if u.Scheme == "http" && !insecure {
		return "", fmt.Errorf("refusing %q: over http:// the device code and the token travel unencrypted; use the site's https:// URL, or --insecure for a test site", raw)
	}
	return site, nil
}

// noDowngrade refuses redirects away from https (unless insecure).
func noDowngrade(insecure bool) func(*http.Request, []*http.Request) error {
	return func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("too many redirects")
		}
		if req.URL.Scheme != "https" && !insecure {
			return fmt.Errorf("refusing a redirect to %s://%s: not https (--insecure allows it)", req.URL.Scheme, req.URL.Host)
		}
		return nil
	}
}

func cmdOIDCLogin(fl caddycmd.Flags) (int, error) {
	site, err := checkSiteURL(fl.Arg(0), fl.Bool("insecure"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	store, err := tokenStorePath()
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	// The stored token is the site's, or the site's at one provider.
	key, query := site, ""
	if p := fl.String("provider"); p != "" {
		key, query = site+"#"+p, "?provider="+url.QueryEscape(p)
	}
	if fl.Bool("print") && !fl.Bool("force") {
		if t, ok := loadStoredToken(store, key); ok && time.Until(time.Unix(t.ExpiresAt, 0)) > time.Hour {
			fmt.Println(t.Token)
			return caddy.ExitCodeSuccess, nil
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	client := &http.Client{Timeout: 30 * time.Second, CheckRedirect: noDowngrade(fl.Bool("insecure"))}
	t, err := deviceLogin(ctx, client, site+"/"+strings.Trim(fl.String("routes"), "/"), query, fl.String("client-id"), os.Stderr, nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if err := saveToken(store, key, t); err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	fmt.Fprintf(os.Stderr, "Logged in; token stored in %s (valid until %s).\n", store, time.Unix(t.ExpiresAt, 0).Format(time.RFC1123))
	if fl.Bool("print") {
		fmt.Println(t.Token)
	}
	return caddy.ExitCodeSuccess, nil
}

// storedToken is one site's token in the CLI's token file.
type storedToken struct {
	Token     string `json:"token"`
	ExpiresAt int64  `json:"expires_at"`
}

func tokenStorePath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, "caddy-oidc", "tokens.json"), nil
}

func loadStoredToken(path, site string) (storedToken, bool) {
	all := map[string]storedToken{}
	b, err := os.ReadFile(path)
	if err != nil || json.Unmarshal(b, &all) != nil {
		return storedToken{}, false
	}
	t, ok := all[site]
	return t, ok && t.Token != ""
}

// saveToken writes the site's token into the 0600 token file.
func saveToken(path, site string, t storedToken) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	all := map[string]storedToken{}
	if b, err := os.ReadFile(path); err == nil {
		_ = json.Unmarshal(b, &all)
	}
	all[site] = t
	b, _ := json.MarshalIndent(all, "", "  ")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// deviceLogin runs the RFC 8628 client side against routes (site + prefix),
// with query ("" or "?provider=<name>") added to its URLs. sleep, when nil,
// is time.Sleep bounded by ctx.
func deviceLogin(ctx context.Context, client *http.Client, routes, query, clientID string, out io.Writer, sleep func(time.Duration)) (storedToken, error) {
	if sleep == nil {
		sleep = func(d time.Duration) {
			select {
			case <-ctx.Done():
			case <-time.After(d):
			}
		}
	}
	var start struct {
		DeviceCode              string `json:"device_code"`
		UserCode                string `json:"user_code"`
		VerificationURI         string `json:"verification_uri"`
		VerificationURIComplete string `json:"verification_uri_complete"`
		ExpiresIn               int    `json:"expires_in"`
		Interval                int    `json:"interval"`
		Error                   string `json:"error"`
		Description             string `json:"error_description"`
	}
	status, err := postForm(ctx, client, routes+"/device/code"+query, url.Values{"client_id": {clientID}}, &start)
	if err != nil && status != http.StatusTooManyRequests {
		return storedToken{}, err
	}
	switch {
	case status == http.StatusTooManyRequests:
		return storedToken{}, fmt.Errorf("the site is limiting device logins (%s): retry in a minute", start.Error)
	case start.Error == "invalid_client":
		return storedToken{}, fmt.Errorf("the site does not accept the client name %q (--client-id): %s", clientID, start.Description)
	case status != http.StatusOK || start.DeviceCode == "":
		return storedToken{}, fmt.Errorf("the site refused the device login (status %d %s): does its oidc block have azat?", status, start.Error)
	}
	fmt.Fprintf(out, "To log in, open %s\nand enter the code %s\n(or open %s)\n", start.VerificationURI, start.UserCode, start.VerificationURIComplete)
	interval := time.Duration(max(start.Interval, 1)) * time.Second
	deadline := time.Now().Add(time.Duration(start.ExpiresIn) * time.Second)
	for time.Now().Before(deadline) {
		sleep(interval)
		if ctx.Err() != nil {
			return storedToken{}, ctx.Err()
		}
		var res struct {
			AccessToken string `json:"access_token"`
			ExpiresAt   int64  `json:"expires_at"`
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		status, err := postForm(ctx, client, routes+"/device/token"+query, url.Values{
			"grant_type": {deviceGrantType}, "device_code": {start.DeviceCode}, "client_id": {clientID}}, &res)
		if err != nil {
			fmt.Fprintf(out, "polling failed (%v); retrying\n", err)
			continue
		}
		switch {
		case status == http.StatusOK && res.AccessToken != "":
			return storedToken{Token: res.AccessToken, ExpiresAt: res.ExpiresAt}, nil
		case res.Error == "authorization_pending":
		case res.Error == "slow_down":
			interval += 5 * time.Second
		case status >= 500:
			fmt.Fprintf(out, "the site answered %d; retrying\n", status)
		default:
			return storedToken{}, fmt.Errorf("device login failed: %s %s", res.Error, res.Description)
		}
	}
	return storedToken{}, errors.New("device login failed: expired_token (the code expired before approval)")
}

func postForm(ctx context.Context, client *http.Client, u string, form url.Values, v any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, strings.NewReader(form.Encode()))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(v); err != nil {
		return resp.StatusCode, fmt.Errorf("status %d, unreadable answer: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, nil
}
