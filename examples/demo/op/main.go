// Command op runs a local OpenID Provider for the demo: zitadel/oidc's example
// OP (see internal/testop) with a confidential client for the demo RP.
//
//	go run ./examples/demo/op [-addr 127.0.0.1:9998] [-issuer http://127.0.0.1:9998]
//
// The client secret comes from -client-secret, else $DEMO_CLIENT_SECRET, else
// "demo-secret".
package main

import (
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

func main() {
	defaultSecret := os.Getenv("DEMO_CLIENT_SECRET")
	if defaultSecret == "" {
		defaultSecret = "demo-secret"
	}
	addr := flag.String("addr", "127.0.0.1:9998", "listen address")
	issuer := flag.String("issuer", "", "issuer URL (default http://<addr>)")
	clientID := flag.String("client-id", "demo", "client id of the demo RP")
	clientSecret := flag.String("client-secret", defaultSecret, "client secret of the demo RP (default $DEMO_CLIENT_SECRET or demo-secret)")
	redirects := flag.String("redirect-uris",
		"http://127.0.0.1:8080/auth/callback,http://localhost:8080/auth/callback",
		"comma-separated redirect URIs of the demo RP (exact match)")
	atLifetime := flag.Duration("access-token-lifetime", 5*time.Minute, "access token lifetime")
	opaque := flag.Bool("opaque-access-tokens", false, "issue opaque access tokens instead of JWTs")
	quiet := flag.Bool("quiet", false, "do not log requests")
	flag.Parse()

	if *issuer == "" {
		*issuer = "http://" + *addr
	}
	var uris []string
	for _, u := range strings.Split(*redirects, ",") {
		if u = strings.TrimSpace(u); u != "" {
			uris = append(uris, u)
		}
	}
	opts := testop.Options{
		Addr:                *addr,
		Issuer:              strings.TrimSuffix(*issuer, "/"),
		AccessTokenLifetime: *atLifetime,
		Clients: []testop.Client{{
			ID:           *clientID,
			Secret:       *clientSecret,
			RedirectURIs: uris,
			// post_logout_redirect_uri: any path on 127.0.0.1 / localhost
		}},
	}
	if *opaque {
		opts.AccessTokenType = testop.AccessTokenOpaque
	}
	if !*quiet {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}

	o, err := testop.Start(opts)
	if err != nil {
		fmt.Fprintln(os.Stderr, "op:", err)
		os.Exit(1)
	}

	fmt.Printf(`
Demo OpenID Provider (zitadel/oidc example OP) is running

  issuer          %s
  discovery       %s
  client id       %s
  client secret   %s
  redirect URIs   %s

  ==> log in with  username: %s   password: %s
      (second user: %s / %s)

Press Ctrl+C to stop.

`, o.Issuer, o.URL(testop.PathDiscovery), *clientID, *clientSecret, strings.Join(uris, " "),
		testop.Username, testop.Password, testop.Username2, testop.Password2)

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	<-sig
	o.Close()
}
