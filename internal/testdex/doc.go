// Package testdex runs dex (github.com/dexidp/dex, v2.45.1), a second,
// independent OpenID Provider for tests, next to testop's zitadel-based one.
//
// dex is a real binary, not a library linked into the test: Binary builds
// github.com/dexidp/dex/cmd/dex once per machine from the nested module
// ./dexbin (its own go.mod and go.sum, so dex's dependencies never enter the
// main module's go.mod and change what Caddy is built with) and caches it
// under os.UserCacheDir()/caddy-oidc-testdex/. The first build takes
// minutes (5 on a loaded 2-core machine from empty module and build caches);
// later runs start dex in well under a second. It needs the Go toolchain and the module proxy, nothing
// else (CGO off). $CADDY_OIDC_DEX_BIN points at a prebuilt binary instead.
//
// Start runs dex on 127.0.0.1 with a free port, memory storage, the password
// database (enablePasswordDB) with static users, a confidential and a public
// static client, and the approval screen skipped. It stops dex on t.Cleanup
// and puts dex's log into the test log when the test failed.
//
// # Clients and users
//
//   - Confidential client Options.ClientID / ClientSecret (default "dex-web"
//     / "dex-web-secret"), client_secret_basic or client_secret_post. dex
//     compares its redirect URIs exactly: no globs and no "any port", and
//     static clients cannot change while dex runs. A test whose RP listens
//     on a port known only later has to pick the port first (and pass the
//     callback in Options.RedirectURIs) or use the public client.
//   - Public client Options.PublicClientID (default "dex-public"): no
//     secret, and, without PublicRedirectURIs, any http://localhost or
//     loopback-IP redirect URI on any port and path. dex does not require
//     PKCE from it (nor from anyone) but checks it when the request has it.
//   - Users (Options.Users, default two): "dex-user@example.com" /
//     "dex-password" (name dex-user, preferred_username dexuser, groups
//     dex-admins and dex-users) and "dex-user2@example.com" / "dex-password2"
//     (groups dex-users). They log in by email. "sub" is not the user ID but
//     Subject(userID), dex's base64url protobuf of user ID and connector ID.
//
// # What dex does (v2.45.1), as this package's tests check
//
// Discovery advertises authorization, token, JWKS, userinfo, introspection
// (/token/introspect) and device authorization endpoints; grant types
// authorization_code, refresh_token, password and device_code (as
// configured; no client_credentials); response type code; PKCE S256 and
// plain; RS256; scopes openid, email, groups, profile, offline_access.
//
// dex does NOT have, and the project's tests against it must not expect:
//   - end_session_endpoint: no RP-initiated logout. Logging out at the RP
//     cannot end anything at dex.
//   - back-channel or front-channel logout (no
//     backchannel_logout_supported, no logout tokens, no "sid" claim), and
//     no check_session_iframe.
//   - revocation_endpoint (RFC 7009): refresh tokens cannot be revoked by
//     the RP. They stay valid until used (rotation), until
//     RefreshTokenAbsoluteLifetime / RefreshTokenValidIfNotUsedFor, or
//     until dex stops (memory storage).
//   - an SSO session: dex sets no login cookie, so every authorization
//     request shows the password form again, and prompt=none is ignored
//     (the form, never error=login_required). Login handles this like any
//     login.
//   - client_credentials, implicit or hybrid flows (configured here:
//     response type code only), dynamic registration.
//   - auth_time, amr, acr, sid, jti, nbf or azp (azp only with several
//     audiences) in ID tokens.
//
// Access tokens are JWTs shaped like ID tokens: dex mints them with the ID
// token code. Same iss, sub, aud (exactly [client_id]), exp (the ID token
// lifetime, Options.IDTokenLifetime; there is no separate access token
// lifetime), iat, and the same user claims for the scopes (email,
// email_verified, name, preferred_username, groups). There is no typ,
// scope, client_id or jti. Every access token has an at_hash (of a random
// ID, matching nothing). An access token from the code flow or from a
// refresh also carries the authorization request's nonce. So caddyoidc
// classifies every dex access token as ID-token-shaped (nonce, at_hash) and
// accepts it as a bearer only with `bearer_id_token_shaped accept`. An ID
// verifier for the client accepts dex's access tokens, and dex's userinfo
// and introspection accept its ID tokens.
//
// ID tokens from the code flow have nonce, at_hash and c_hash. Refreshed ID
// tokens repeat the login's nonce (zitadel's have none). The groups claim
// needs scope groups. An unknown scope (anything but openid, profile,
// email, groups, offline_access, federated:id and
// audience:server:client_id:<id>) is an error.
//
// Refresh tokens need offline_access. They rotate by default: each refresh
// returns a new one, and the old one is refused afterwards unless
// RefreshTokenReuseInterval allows it. Options.DisableRefreshTokenRotation
// makes dex hand back the same one. Access tokens are stateless: a refresh
// or a spent refresh token does not invalidate earlier access tokens.
//
// Token endpoint errors: a bogus or spent authorization code gives
// invalid_grant. A spent, unknown or expired refresh token gives
// invalid_request (400, "Refresh token is invalid or has already been
// claimed by another client." or "Refresh token expired."), NOT
// invalid_grant. Only a refresh token of another client gives invalid_grant.
// Code that ends a session only on invalid_grant keeps a dead dex session. A
// wrong client secret gives invalid_client (401).
//
// Introspection (RFC 7662) needs no client authentication, and for JWTs it
// checks only signature and expiry: an access token stays active after its
// refresh token was spent, and an ID token introspects as an active
// access_token. Userinfo likewise takes any unexpired token dex signed and
// answers with that token's claims.
//
// Keys: one RS256 signing key, rotated every 6h by default
// (Options.SigningKeyRotation). Old keys stay in the JWKS while tokens they
// signed can be valid.
//
// Login forms: the local connector's form is at /auth/local/login?state=
// (fields "login" and "password", posted to the form's action). A refused
// login shows the form again with status 401 and "Invalid Email Address and
// password.". The approval page (Options.ShowApprovalScreen) posts req and
// approval=approve to /approval?req=..&hmac=...
package testdex
