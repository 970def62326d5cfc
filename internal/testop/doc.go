// Package testop runs a real OpenID Provider for tests and the demo.
//
// The OP is zitadel/oidc v3's op package (op.NewOpenIDProvider) backed by the
// in-memory storage of its example server
// (github.com/zitadel/oidc/v3/example/server/storage), which is embedded and
// extended with some overridden methods (see storage.go). The HTTP wiring is a
// small copy of example/server/exampleop: same op.Config, same
// username/password login form at /login/username, same /logged-out page.
// exampleop.SetupServer itself is not used because it calls slog.SetDefault
// and log.Fatal, logs every request through the global logger, and its login
// router is unexported.
//
// Each OP gets its own client map (storage.NewStorageWithClients), so OPs
// running in parallel in one test binary share nothing. The storage's
// package-global clients map and storage.RegisterClients are not used.
//
// # Clients and users
//
//   - "web" / "web-secret": confidential web client. Grants authorization_code
//     (PKCE optional), refresh_token and token exchange. Redirect URIs:
//     any port and path on http://127.0.0.1 and http://localhost.
//   - "public": public native client (auth method none), PKCE required, same
//     redirect URIs.
//   - "other" / "other-secret": like "web"; tokens issued to it have
//     aud=["other"].
//   - "sid1" / "verysecret": the storage's built-in service user, client_credentials only.
//   - Options.Clients: more clients, e.g. the demo's.
//   - Users (from the storage): "test-user@localhost" / "verysecure" (sub "id1",
//     Test User, test-user@zitadel.ch, groups admin+users) and "test-user2" /
//     "verysecure" (sub "id2", groups users).
//
// # What the zitadel OP does (v3.48.0), as checked by this package's tests
//
// Refresh tokens are only issued if the scope includes offline_access. The
// storage always rotates them: every refresh returns a new refresh token, and
// the old one then fails with invalid_grant. The access token that came with
// the old refresh token is deleted too, so userinfo answers 403 for it and
// introspection says active=false. A JWT access token still verifies offline
// until its exp. Every refresh also returns a new id_token, without a nonce.
// Options.DisableRefreshTokenRotation makes the OP hand back the same refresh
// token every time; this package adds that. Refresh tokens live 5h (hard-coded
// in the storage); RefreshTokenLifetime can only make that shorter.
//
// Access tokens are JWTs by default here. The storage's constructors would
// make opaque bearer tokens. JWT claims: iss, sub, aud, exp, iat, nbf, jti,
// client_id, groups. There is no scope claim. For code and refresh, aud is
// exactly [client_id]. For client_credentials, sub=client_id=aud=["sid1"]; this
// package adds the "aud:<x>" scopes to aud. Opaque tokens are encrypted
// "tokenID:subject" strings, so only the OP (introspection, userinfo) can
// validate them. The storage hard-codes a lifetime of 5m. This package applies
// Options.AccessTokenLifetime to exp, to expires_in, and at userinfo and
// introspection.
//
// ID tokens have iss, sub, aud=[client_id], azp, client_id, exp (1h), iat,
// auth_time, amr=["pwd"], nonce, at_hash and c_hash. When an access token is
// issued as well, zitadel by default leaves out the profile, email and phone
// claims and serves them from userinfo only; Options.StrictIDTokenClaims keeps
// that behaviour. By default this package includes them: for the requested
// scopes, email, email_verified, preferred_username, name, given_name,
// family_name and locale. The groups claim (Options.GroupsClaim) is added to
// ID tokens, JWT access tokens, userinfo and introspection, whatever the
// scopes.
//
// Userinfo (GET or POST, Bearer) returns claims by scope: sub (openid),
// email and email_verified (email), and the profile claims, plus groups. If a
// JWT is invalid or expired the answer is 401 with a text body. If an opaque
// token is unknown, expired or revoked, or an access token was superseded by a
// refresh, the answer is 403 with a JSON body.
//
// Introspection (RFC 7662) needs client authentication by HTTP Basic
// (client_secret_basic) or private_key_jwt. With client_secret_post the answer
// is 401 invalid_client; discovery advertises this correctly. Any client in
// the storage's client table may call it: web, other and extra clients. "sid1"
// cannot, because it is not in that table, and "public" cannot because it has
// no secret. The answer is active=true only if the calling client is in the
// token's aud. So "web" can introspect tokens issued to "web", but not those
// of "other". A service token needs scope "aud:web" before "web" can
// introspect it. Response fields: active, sub, client_id, scope, exp, username,
// the user's claims for the token's scopes, and groups. This package adds aud,
// iss, iat and token_type. It also makes client_credentials tokens
// introspectable; the storage answered active=false for them ("user not
// found").
//
// Revocation (RFC 7009) accepts client_secret_basic or client_secret_post, and
// client_id alone for public clients. Revoking a refresh token also deletes its
// access token. A token belonging to a different client gives 401
// invalid_client.
//
// end_session (GET or POST) takes id_token_hint and/or client_id, plus
// post_logout_redirect_uri and state. The post_logout_redirect_uri must match
// the client's post-logout URIs, or its globs with path.Match: "*" does not
// cross "/". The OP deletes all tokens of that user and client, then redirects
// with state appended, or to /logged-out. There is no SSO session cookie:
// every authorization request shows the login form again, and prompt=none
// always gives login_required.
//
// At the token endpoint a confidential client may authenticate with either
// client_secret_basic or client_secret_post. Discovery also advertises
// implicit, jwt-bearer, token-exchange and the device flow. There is no device
// UI here.
//
// Keys: the storage's single fixed RSA key is replaced by a per-OP key ring
// (RS256 or ES256). RotateSigningKey keeps old keys in the JWKS;
// ReplaceSigningKey drops them, RemoveKey drops one. The JWKS response carries
// no caching headers unless SetJWKSCacheControl sets one.
//
// Authorization endpoint: the path is /authorize, not exampleop's /auth. In
// v3.48.0, op.WithCustom*Endpoint writes to the package-global
// op.DefaultEndpoints, which is a data race when OPs start concurrently.
//
// Logging: the op package logs request errors (e.g. "auth request: not
// redirecting") with slog.Default. Options.Logger only controls this package's
// per-request log.
package testop
