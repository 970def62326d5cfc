// Package caddyoidcplugins registers this project's Caddy modules. Build a
// Caddy with them with `./xcaddy.sh build` or
// `xcaddy build --with github.com/caddy-oidc/caddy-oidc`.
package caddyoidcplugins

import (
	// The OpenID Connect relying party handler (`oidc` directive).
	_ "github.com/caddy-oidc/caddy-oidc/caddyoidc"
	// Long-lived proxy-minted access tokens.
	_ "github.com/caddy-oidc/caddy-oidc/azatauth"
)
