// Command op is the benchmark's OpenID Provider and credential fetcher.
//
// It starts internal/testop's OP (zitadel/oidc) with the confidential client
// demo / demo-secret, and serves it until SIGINT or SIGTERM. When -cookie-site,
// -bearer-site or -azat-site are given, it then waits for those Caddy sites to
// answer, obtains a credential for each and writes, into -out, one file per
// scenario holding the complete request header for wrk -H:
//
//	cookie.hdr  "Cookie: caddy_oidc=..."   (logged in through -cookie-site:
//	            /auth/login -> OP login form -> /auth/callback)
//	bearer.hdr  "Authorization: Bearer <JWT>" (client_credentials token of the
//	            service client sid1 with scope "aud:demo", so its aud contains
//	            the site's client_id)
//	azat.hdr    "Authorization: Bearer <AZAT>" (logged in through -azat-site,
//	            then GET /auth/token with the session cookie)
//
// Each credential is checked once (GET / must answer 200 "ok") before it is
// written. Every address is on loopback; the program refuses others.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:18199", "OP listen address (loopback)")
	clientID := flag.String("client-id", "demo", "client id of the sites")
	clientSecret := flag.String("client-secret", "demo-secret", "client secret of the sites")
	atLifetime := flag.Duration("access-token-lifetime", time.Hour, "access token lifetime")
	cookieSite := flag.String("cookie-site", "", "origin of the cookie-session site, e.g. http://127.0.0.1:18182")
	bearerSite := flag.String("bearer-site", "", "origin of the bearer-JWT site")
	azatSite := flag.String("azat-site", "", "origin of the AZAT site")
	out := flag.String("out", ".", "directory for cookie.hdr, bearer.hdr, azat.hdr")
	wait := flag.Duration("wait", 60*time.Second, "how long to wait for the sites")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("bench/op: ")

	mustLoopback(*addr)
	for _, s := range []string{*cookieSite, *bearerSite, *azatSite} {
		if s != "" {
			u, err := url.Parse(s)
			if err != nil {
				log.Fatalf("bad site %q: %v", s, err)
			}
			mustLoopback(u.Host)
		}
	}

	o, err := testop.Start(testop.Options{
		Addr:                *addr,
		AccessTokenLifetime: *atLifetime,
		// No redirect URIs: any port and path on 127.0.0.1 / localhost.
		Clients: []testop.Client{{ID: *clientID, Secret: *clientSecret}},
	})
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("OpenID Provider on %s (client %s)", o.Issuer, *clientID)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)

	if *cookieSite != "" || *bearerSite != "" || *azatSite != "" {
		ctx, cancel := context.WithTimeout(context.Background(), *wait+30*time.Second)
		err := fetchAll(ctx, o, *out, *cookieSite, *bearerSite, *azatSite, *wait)
		cancel()
		if err != nil {
			o.Close()
			log.Fatal(err)
		}
	}
	<-sig
	o.Close()
}

func mustLoopback(hostport string) {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		host = hostport
	}
	if host == "localhost" {
		return
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		log.Fatalf("refusing non-loopback address %q", hostport)
	}
}

func fetchAll(ctx context.Context, o *testop.OP, out, cookieSite, bearerSite, azatSite string, wait time.Duration) error {
	for _, s := range []string{cookieSite, bearerSite, azatSite} {
		if s != "" {
			if err := waitSite(ctx, s, wait); err != nil {
				return err
			}
		}
	}
	write := func(name, header string) error {
		return os.WriteFile(filepath.Join(out, name), []byte(header+"\n"), 0o600)
	}
	if cookieSite != "" {
		cookie, err := login(ctx, o, cookieSite)
		if err != nil {
			return fmt.Errorf("cookie login: %w", err)
		}
		h := "Cookie: " + cookie
		if err := check(ctx, cookieSite, h); err != nil {
			return fmt.Errorf("cookie scenario: %w", err)
		}
		if err := write("cookie.hdr", h); err != nil {
			return err
		}
		log.Printf("cookie session: %d bytes of Cookie header", len(cookie))
	}
	if bearerSite != "" {
		tok, err := o.ClientCredentialsToken(ctx, testop.AudienceScopePrefix+"demo")
		if err != nil {
			return fmt.Errorf("client_credentials token: %w", err)
		}
		h := "Authorization: Bearer " + tok.AccessToken
		if err := check(ctx, bearerSite, h); err != nil {
			return fmt.Errorf("bearer scenario: %w", err)
		}
		if err := write("bearer.hdr", h); err != nil {
			return err
		}
		log.Printf("bearer JWT: %d bytes", len(tok.AccessToken))
	}
	if azatSite != "" {
		cookie, err := login(ctx, o, azatSite)
		if err != nil {
			return fmt.Errorf("AZAT site login: %w", err)
		}
		azat, err := mintAZAT(ctx, azatSite, cookie)
		if err != nil {
			return err
		}
		h := "Authorization: Bearer " + azat
		if err := check(ctx, azatSite, h); err != nil {
			return fmt.Errorf("AZAT scenario: %w", err)
		}
		if err := write("azat.hdr", h); err != nil {
			return err
		}
		log.Printf("AZAT: %d bytes", len(azat))
	}
	return nil
}

var noRedirect = &http.Client{
	Timeout:       10 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

// waitSite waits until site/auth/login redirects (the provider was discovered).
func waitSite(ctx context.Context, site string, wait time.Duration) error {
	deadline := time.Now().Add(wait)
	var last string
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, site+"/auth/login", nil)
		resp, err := noRedirect.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusFound || resp.StatusCode == http.StatusSeeOther {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("%s/auth/login did not redirect within %s (last: %s)", site, wait, last)
}

// login logs the test user in through site and returns its session cookies
// as a Cookie header value.
func login(ctx context.Context, o *testop.OP, site string) (string, error) {
	jar, err := cookiejar.New(nil)
	if err != nil {
		return "", err
	}
	client := &http.Client{Jar: jar, Timeout: 10 * time.Second}
	cb, err := o.Login(ctx, client, site+"/auth/login?back=/", testop.Username, testop.Password)
	if err != nil {
		return "", err
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, cb, nil)
	c := *noRedirect
	c.Jar = jar
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	resp.Body.Close()
	if resp.StatusCode < 300 || resp.StatusCode >= 400 {
		return "", fmt.Errorf("callback: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	u, _ := url.Parse(site + "/")
	var pairs []string
	for _, ck := range jar.Cookies(u) {
		pairs = append(pairs, ck.Name+"="+ck.Value)
	}
	if len(pairs) == 0 {
		return "", errors.New("no session cookie after the callback")
	}
	return strings.Join(pairs, "; "), nil
}

func mintAZAT(ctx context.Context, site, cookie string) (string, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, site+"/auth/token", nil)
	req.Header.Set("Cookie", cookie)
	req.Header.Set("Accept", "application/json")
	resp, err := noRedirect.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET /auth/token: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var v struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.Token == "" {
		return "", fmt.Errorf("GET /auth/token: no token in %q", body)
	}
	return v.Token, nil
}

// check sends one GET / with header and expects the upstream's 200 "ok".
func check(ctx context.Context, site, header string) error {
	name, value, _ := strings.Cut(header, ": ")
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, site+"/", nil)
	req.Header.Set(name, value)
	resp, err := noRedirect.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK || string(body) != "ok" {
		return fmt.Errorf("GET %s/: %s %q (want 200 \"ok\")", site, resp.Status, body)
	}
	return nil
}
