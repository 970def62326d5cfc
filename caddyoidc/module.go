// Package caddyoidc is a Caddy HTTP handler that puts OpenID Connect in front
// of any upstream: Authorization Code + PKCE login, encrypted cookie or
// server-side sessions, server-side refresh, bearer tokens from service
// accounts and CLIs, role and claim rules, and injection of the user's token
// and identity into the proxied request.
package caddyoidc

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/caddy-oidc/caddy-oidc/azatauth"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/idp"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

func init() {
	caddy.RegisterModule(OIDC{})
}

// OIDC authenticates every request that reaches it with OpenID Connect and
// serves the login, callback, refresh, logout and userinfo routes under
// `routes` (default `/auth`).
//
// Unauthenticated browser navigations are redirected to the login route;
// other requests get 401 with `WWW-Authenticate: Bearer` and a JSON body.
// Authenticated requests continue to the next handler with
// `Authorization: Bearer <access token>` and `X-Auth-Request-*` identity
// headers, and the `{http.auth.user.*}` placeholders set.
type OIDC struct {
	// Provider holds the options of the site's one OpenID Provider when
	// the site has a single provider (the fields appear at the top level of
	// the handler's JSON, `issuer`, `client_id`, ...). With Providers, they
	// stay empty: each provider has its own.
	Provider

	// Site is the site's address (for example `https://files.example.com`):
	// with the issuer and the client ID it names this handler's namespace,
	// and its origin is the default issuer of AZATs. The Caddyfile fills it
	// from the site block's first address. Sites never share sessions,
	// grants, device codes or keys unless they share a Namespace.
	Site string `json:"site,omitempty"`

	// Namespace, when set, replaces the site in the namespace: handlers
	// (sites, or instances with different addresses) that name the same
	// namespace, with the same issuer and client ID, share sessions, grants,
	// device codes and AZAT keys. 1-64 letters, digits, `.`, `_` or `-`.
	Namespace string `json:"namespace,omitempty"`

	// Routes is the path prefix of the routes this handler serves:
	// `<routes>/login`, `/callback`, `/refresh`, `/logout`, `/userinfo`.
	// Default: `/auth`.
	Routes string `json:"routes,omitempty"`

	// PostLogoutRedirectURL is where the provider sends the browser after
	// logout (`post_logout_redirect_uri`). Default: the site's origin + `/`.
	PostLogoutRedirectURL string `json:"post_logout_redirect_url,omitempty"`

	// CookieSecret encrypts and authenticates the session and login-flow
	// cookies (AES-256-GCM, key derived with HKDF). At least 32 bytes. If
	// empty, a random secret is generated once and kept in Caddy's storage,
	// so restarts and instances sharing storage keep sessions.
	CookieSecret string `json:"cookie_secret,omitempty"`

	// CookieName is the session cookie's name (chunks get `_0`, `_1`, ...
	// suffixes; the flow and exposed-token cookies get `_flow_...`,
	// `_access_token`, `_id_token`). The effective names start with
	// `__Host-` when cookie_host_prefix applies (`__Host-caddy_oidc_0`); the
	// name itself must not start with `__Host-` or `__Secure-`.
	// Default: `caddy_oidc`.
	CookieName string `json:"cookie_name,omitempty"`

	// CookieDomain sets the cookies' Domain attribute. Default: none (host-only).
	CookieDomain string `json:"cookie_domain,omitempty"`

	// CookieHostPrefix names every cookie of the handler `__Host-` +
	// cookie_name + suffix (`__Host-caddy_oidc_0`, `__Host-caddy_oidc_flow_...`,
	// `__Host-caddy_oidc_access_token`) when the cookie is Secure and
	// host-only (no cookie_domain): browsers accept such a cookie only with
	// Secure, no Domain and Path=/, so a sibling subdomain or a plain-HTTP
	// page cannot set or shadow it. Over plain HTTP or with cookie_domain the
	// names have no prefix. Default: on; `off` keeps the bare names.
	CookieHostPrefix *bool `json:"cookie_host_prefix,omitempty"`

	// CookieSecure forces the Secure attribute on (`true`) or off (`false`).
	// Default: Secure unless the request arrived over plain HTTP.
	CookieSecure *bool `json:"cookie_secure,omitempty"`

	// CookieSameSite is the SameSite attribute of the session cookies:
	// `lax` (default), `strict` or `none` (requires Secure).
	CookieSameSite string `json:"cookie_samesite,omitempty"`

	// Session selects where tokens live: `cookie` (default: encrypted in the
	// browser's cookies, split into chunks under 4 KB) or `store` (a random
	// session id in the cookie, tokens encrypted in Caddy's storage, shared by
	// every instance that shares the storage).
	Session string `json:"session,omitempty"`

	// SessionLifetime is how long a session lasts after login, whatever the
	// refreshes. Default: 168h.
	SessionLifetime caddy.Duration `json:"session_lifetime,omitempty"`

	// SessionCache, with `session store`, is how long a session read from
	// storage is used from memory on the request path. A logout or
	// back-channel logout on this instance applies at once; one on another
	// instance sharing the storage within this time. Default: 1s; negative:
	// read storage on every request.
	SessionCache caddy.Duration `json:"session_cache,omitempty"`

	// RefreshBefore refreshes the access token server-side when it expires
	// within this duration. Default: 30s.
	RefreshBefore caddy.Duration `json:"refresh_before,omitempty"`

	// ExposeTokens sets the access and ID tokens in cookies readable by
	// browser JavaScript (`<cookie_name>_access_token`, `_id_token`), for
	// single-page apps that call APIs themselves. The refresh token is never
	// readable by JavaScript.
	ExposeTokens bool `json:"expose_tokens,omitempty"`

	// AllowAnonymous lets unauthenticated requests through to the next
	// handler, without identity (identity headers are still removed).
	AllowAnonymous bool `json:"allow_anonymous,omitempty"`

	// PassToken selects the token sent upstream in `Authorization: Bearer`:
	// `access` (default), `id` or `none` (the header is removed).
	PassToken string `json:"pass_token,omitempty"`

	// IdPTimeout bounds every call to the provider (discovery, keys, token,
	// userinfo, introspection, revocation). Default: 10s.
	IdPTimeout caddy.Duration `json:"idp_timeout,omitempty"`

	// StripCookies removes this handler's own cookies from the request sent
	// upstream. Default: true.
	StripCookies *bool `json:"strip_cookies,omitempty"`

	// AZAT enables long-lived access tokens minted by this proxy (see the
	// azatauth package): `<routes>/token` mints one for the logged-in user,
	// `<routes>/revoke` ends all of them, and an AZAT presented as a bearer
	// token is verified offline and swapped for a fresh provider access
	// token upstream. Users need a refresh token (offline access).
	AZAT *azatauth.Config `json:"azat,omitempty"`

	// Providers are the site's named OpenID Providers, when it has several
	// (a company Keycloak and Google; an Entra tenant per customer; a CI
	// system's workload tokens). Each has its own namespace (sessions,
	// grants, device codes, AZAT keys), callback
	// (`<routes>/callback/<name>`), back-channel logout endpoint
	// (`<routes>/backchannel-logout/<name>`), audience, rules and claim
	// headers. Browsers choose one at `<routes>/login` (a chooser page, or
	// `?provider=<name>`); bearer tokens go to the one provider whose issuer
	// is their `iss`. The top-level provider options must then be empty.
	Providers []*Provider `json:"providers,omitempty"`

	// DefaultProvider names the provider `<routes>/login` uses without a
	// `provider` parameter, instead of showing the chooser page; the device
	// flow uses it too. Default: the only provider that is not bearer_only,
	// if there is one.
	DefaultProvider string `json:"default_provider,omitempty"`

	azat *azatauth.Service
	// providers dispatches the requests of a site with several providers
	// (nil with one); member is true for a provider handler of such a site.
	providers *providerSet
	member    bool
	rt        *runtime
	logger    *zap.Logger
	storage   certmagic.Storage
	cancel    context.CancelFunc
}

// Provider is one OpenID Provider of a site and this site's client there.
type Provider struct {
	// Name names the provider in `<routes>/login?provider=<name>`, its
	// callback and back-channel logout paths, the chooser page, the
	// `{http.auth.user.provider}` placeholder and the
	// `X-Auth-Request-Provider` header. Required in Providers: 1-32
	// lowercase letters, digits or `-`. For a single top-level provider it
	// is optional (without it, no provider header is sent).
	Name string `json:"name,omitempty"`

	// Label is the provider's name on the chooser page ("Log in with
	// <label>"). Default: the name.
	Label string `json:"label,omitempty"`

	// Issuer is the OpenID Provider's issuer URL. Endpoints and keys are
	// discovered from `<issuer>/.well-known/openid-configuration`. Required.
	Issuer string `json:"issuer,omitempty"`

	// ClientID is the OAuth 2.0 client identifier registered at the provider.
	// Required.
	ClientID string `json:"client_id,omitempty"`

	// ClientSecret is the client's secret. Leave it empty for a public client
	// (PKCE protects the code exchange). Give it as a placeholder such as
	// `{env.OIDC_CLIENT_SECRET}` or `{file./run/secrets/oidc}` so that it never
	// appears in the configuration dump.
	ClientSecret string `json:"client_secret,omitempty"`

	// Scopes requested at login. Default: `openid profile email`. Must contain
	// `openid`; add `offline_access` (or the provider's equivalent) to get a
	// refresh token.
	Scopes []string `json:"scopes,omitempty"`

	// Audience lists the values of which at least one must be in the `aud`
	// claim of bearer access tokens. Default: the client ID, which is also
	// the aud of the client's ID tokens and logout tokens (a warning at
	// start-up says so): an API audience distinct from the client_id, set up
	// at the provider, separates access tokens from them.
	Audience []string `json:"audience,omitempty"`

	// RedirectURL is the absolute callback URL registered at the provider.
	// Default: the request's origin + `<routes>/callback`.
	RedirectURL string `json:"redirect_url,omitempty"`

	// AuthParams are extra parameters added to the authorization request,
	// for example `access_type=offline` and `prompt=consent` for Google.
	// Protocol parameters (state, nonce, code_challenge, ...) cannot be
	// overridden.
	AuthParams map[string]string `json:"auth_params,omitempty"`

	// RolesClaim is the path of the claim holding the user's roles or groups,
	// as a list of nested claim names, e.g. `["realm_access","roles"]` or
	// `["https://hasura.io/jwt/claims","x-hasura-allowed-roles"]`. A single
	// element may use dots for nesting. Default: `groups`.
	RolesClaim []string `json:"roles_claim,omitempty"`

	// ClaimHeaders maps upstream header names to claim paths (dotted). The
	// claim's value (arrays joined with commas) is sent in that header; any
	// client-sent copy is removed.
	ClaimHeaders map[string]string `json:"claim_headers,omitempty"`

	// RequireRoles: every entry is a list of roles of which the user must have
	// at least one, else 403.
	RequireRoles [][]string `json:"require_roles,omitempty"`

	// RequireClaims: every entry requires the claim at Path to equal one of
	// Values (for an array claim, to contain one of them), else 403.
	RequireClaims []ClaimRule `json:"require_claims,omitempty"`

	// Introspection enables RFC 7662 introspection of opaque bearer tokens at
	// the provider's advertised `introspection_endpoint` (or
	// IntrospectionEndpoint). An active answer is cached for
	// IntrospectionCache (never past the token's expiry), an inactive or
	// invalid one for 10 s; concurrent requests with one token make one call,
	// and at most 32 calls of this handler are in flight (more wait up to
	// 1 s, then 503).
	// Answers whose token_type is not an access token's are refused.
	Introspection bool `json:"introspection,omitempty"`

	// IntrospectionEndpoint overrides the discovered introspection endpoint.
	IntrospectionEndpoint string `json:"introspection_endpoint,omitempty"`

	// UserinfoFetch fetches the userinfo endpoint at login and merges its
	// claims (its `sub` must equal the ID token's). Default: true when the
	// provider advertises a userinfo endpoint.
	UserinfoFetch *bool `json:"userinfo_fetch,omitempty"`

	// VerifyClientSecret checks the client secret at start-up by posting a
	// bogus authorization code to the token endpoint: `invalid_grant` means
	// the secret was accepted; `invalid_client` or `unauthorized_client`
	// make start-up fail with an error naming the client_id (never the
	// secret). An unreachable provider does not fail start-up.
	VerifyClientSecret bool `json:"verify_client_secret,omitempty"`

	// BackchannelRevokeAZAT makes a back-channel logout naming a user (sub)
	// also revoke that user's AZATs and drop their stored refresh token.
	BackchannelRevokeAZAT bool `json:"backchannel_revoke_azat,omitempty"`

	// TokeninfoEndpoint verifies opaque bearer tokens of providers without
	// RFC 7662 introspection (Google: https://oauth2.googleapis.com/tokeninfo).
	// The token's `aud` or `azp` must equal the client ID.
	TokeninfoEndpoint string `json:"tokeninfo_endpoint,omitempty"`

	// IntrospectionCache is how long an active introspection (or tokeninfo)
	// answer is used before the provider is asked again, so that a token
	// revoked at the provider is refused within this time; never past the
	// token's exp. Default: 60s; negative: ask on every request.
	IntrospectionCache caddy.Duration `json:"introspection_cache,omitempty"`

	// RequireTyp accepts only bearer JWTs whose JOSE header typ is this
	// value (compared case-insensitively, `application/` optional), e.g.
	// `at+jwt` for providers that type their access tokens (RFC 9068).
	// Whatever it says, JWTs typed `logout+jwt`, `id_token+jwt`,
	// `azat+jwt`, `secevent+jwt` or `dpop+jwt`, or with an `events` claim,
	// are never access tokens.
	RequireTyp string `json:"require_typ,omitempty"`

	// BearerIDTokenShaped decides about bearer JWTs carrying an ID token's
	// claims (`nonce`, `at_hash`, `c_hash`): `refuse` (default) or `accept`.
	// `accept` is for providers that build access tokens like ID tokens
	// (dex): such a token is then accepted when the provider issued it and
	// its `aud` contains the client_id, so this client's real ID tokens are
	// accepted as access tokens too. Typed and logout tokens stay refused.
	BearerIDTokenShaped string `json:"bearer_id_token_shaped,omitempty"`

	// MintFromBearer lets `<routes>/token` mint an AZAT for a provider
	// bearer access token (not only for a browser session), when the
	// token's `azp` (else `client_id`) claim is this client_id. Default:
	// off, so that an access token that an upstream received, or one issued
	// to another client, cannot be turned into a long-lived AZAT.
	MintFromBearer bool `json:"mint_from_bearer,omitempty"`

	// BearerOnly makes the provider accept bearer tokens only: it offers no
	// login (a CI system's workload tokens, a partner's service accounts).
	BearerOnly bool `json:"bearer_only,omitempty"`
}

// ClaimRule requires a claim to have one of a set of values.
type ClaimRule struct {
	// Path is the (dotted) claim path, e.g. `email_verified` or `hd`.
	Path string `json:"path"`
	// Values lists the accepted values, compared as strings.
	Values []string `json:"values"`
}

// CaddyModule returns the Caddy module information.
func (OIDC) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.oidc",
		New: func() caddy.Module { return new(OIDC) },
	}
}

// cookieSecretKey is where a generated cookie secret is kept in Caddy storage.
const cookieSecretKey = "caddy-oidc/cookie_secret"

const (
	defaultRoutes          = "/auth"
	defaultCookieName      = "caddy_oidc"
	defaultSessionLifetime = 168 * time.Hour
	defaultRefreshBefore   = 30 * time.Second
	defaultSessionCache    = time.Second
	defaultIdPTimeout      = 10 * time.Second
	// maxLoginMarkers bounds the used login states kept (each for the
	// flowLifetime of its attempt); when full, callbacks answer 503.
	maxLoginMarkers = 100000
)

// Provision sets defaults, resolves placeholders in secrets, loads or creates
// the cookie secret and starts provider discovery in the background.
func (o *OIDC) Provision(ctx caddy.Context) error {
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		initMetrics(reg)
	}
	return o.provision(ctx, ctx.Logger(), ctx.Storage())
}

// provision is Provision without Caddy's context: background work stops when
// ctx ends.
func (o *OIDC) provision(ctx context.Context, logger *zap.Logger, st certmagic.Storage) error {
	if len(o.Providers) > 0 {
		return o.provisionProviders(ctx, logger, st)
	}
	o.logger = logger
	repl := caddy.NewReplacer()

	if len(o.Scopes) == 0 {
		o.Scopes = []string{"openid", "profile", "email"}
	}
	if o.Routes == "" {
		o.Routes = defaultRoutes
	}
	o.Routes = "/" + strings.Trim(o.Routes, "/")
	if o.CookieName == "" {
		o.CookieName = defaultCookieName
	}
	if o.Session == "" {
		o.Session = "cookie"
	}
	if o.SessionLifetime == 0 {
		o.SessionLifetime = caddy.Duration(defaultSessionLifetime)
	}
	if o.RefreshBefore == 0 {
		o.RefreshBefore = caddy.Duration(defaultRefreshBefore)
	}
	if o.SessionCache == 0 {
		o.SessionCache = caddy.Duration(defaultSessionCache)
	}
	if o.IdPTimeout == 0 {
		o.IdPTimeout = caddy.Duration(defaultIdPTimeout)
	}
	if o.PassToken == "" {
		o.PassToken = "access"
	}
	if o.CookieSameSite == "" {
		o.CookieSameSite = "lax"
	}
	if len(o.RolesClaim) == 0 {
		o.RolesClaim = []string{"groups"}
	}

	// Secrets and ids may be placeholders; resolve them here (never in the
	// stored JSON, so the config dump keeps only the placeholder).
	var err error
	resolve := func(s string) (string, error) { return repl.ReplaceOrErr(s, true, true) }
	rt := &runtime{root: "caddy-oidc/"}
	rt.identityHeaders = newHeaderSet(o.ClaimHeaders)
	if rt.issuer, err = resolve(o.Issuer); err != nil {
		return fmt.Errorf("issuer: %v", err)
	}
	if rt.clientID, err = resolve(o.ClientID); err != nil {
		return fmt.Errorf("client_id: %v", err)
	}
	if o.ClientSecret != "" {
		if rt.clientSecret, err = repl.ReplaceOrErr(o.ClientSecret, false, true); err != nil {
			return errors.New("client_secret: unknown placeholder")
		}
	}
	rt.audience = make([]string, 0, len(o.Audience))
	for _, a := range o.Audience {
		v, err := resolve(a)
		if err != nil {
			return fmt.Errorf("audience: %v", err)
		}
		rt.audience = append(rt.audience, v)
	}
	if len(rt.audience) == 0 {
		rt.audience = []string{rt.clientID}
	}
	site := repl.ReplaceKnown(o.Site, "")
	rt.ns = namespaceID(site, rt.issuer, rt.clientID, o.Namespace)
	o.storage = newNSStorage(st, rt.ns)
	if st.Exists(ctx, cookieSecretKey) && !o.storage.Exists(ctx, cookieSecretKey) {
		// Data of a version without namespaces: it fails closed.
		o.logger.Warn("stored sessions, grants and AZAT keys of an earlier version (without namespaces) are not used: users log in again and get new AZATs",
			zap.String("namespace", rt.ns))
	}
	o.warnBearerAudience(rt)
	rt.cookieMarker = o.CookieName + "_"
	rt.m = metricsFor(o.Name)
	rt.callbackPath = o.Routes + "/callback"
	if o.member {
		// One of several providers: the paths and pages name it.
		rt.callbackPath += "/" + o.Name
		rt.providerQuery = "provider=" + url.QueryEscape(o.Name)
	}
	rt.redirectURL = repl.ReplaceKnown(o.RedirectURL, "")
	rt.postLogoutURL = repl.ReplaceKnown(o.PostLogoutRedirectURL, "")
	rt.introspectionURL = repl.ReplaceKnown(o.IntrospectionEndpoint, "")
	rt.httpClient = idp.NewHTTPClient(time.Duration(o.IdPTimeout))

	secret := ""
	if o.CookieSecret != "" {
		if secret, err = repl.ReplaceOrErr(o.CookieSecret, true, true); err != nil {
			return errors.New("cookie_secret: empty or unknown placeholder")
		}
	} else {
		if secret, err = seal.LoadOrCreateSecret(ctx, o.storage, cookieSecretKey); err != nil {
			return fmt.Errorf("cookie secret from storage: %v", err)
		}
	}
	if rt.sealer, err = seal.New([]byte(secret), "cookies\x00"+rt.ns); err != nil {
		return fmt.Errorf("cookie_secret: %v", err)
	}
	rt.refreshes = new(singleflight.Group)
	rt.usedStates = expiry.New[string, struct{}](maxLoginMarkers)
	rt.introspected = expiry.New[[32]byte, *identity](10000)
	rt.remote = newRemoteChecks(maxRejected, maxRemoteCalls)
	o.rt = rt
	rt.stored = &storedSessions{storage: o.storage, sealer: rt.sealer, lifetime: time.Duration(o.SessionLifetime),
		cacheTTL: time.Duration(o.SessionCache), cache: expiry.New[string, *session](4096), revoked: &rt.revoked, m: &rt.m, logger: o.logger}
	rt.sessions = rt.stored
	if o.Session != "store" {
		rt.sessions = &cookieSessions{sealer: rt.sealer, lifetime: time.Duration(o.SessionLifetime),
			cache: expiry.New[string, *session](4096), revoked: &rt.revoked, revoke: o.storeRevocation, m: &rt.m}
	}
	if o.AZAT != nil {
		o.AZAT.Namespace, o.AZAT.SiteOrigin = rt.ns, siteOrigin(site)
		if o.member {
			// Each provider's AZATs have their own issuer (and so
			// audience): the site's, with the provider's name.
			base := o.AZAT.Issuer
			if base == "" {
				base = o.AZAT.SiteOrigin
			}
			if base == "" {
				return errors.New("azat: with several providers, the AZAT issuers are named after the site's address or the azat issuer: give site or azat { issuer }")
			}
			o.AZAT.Issuer = strings.TrimSuffix(base, "/") + "/" + o.Name
		}
		if o.azat, err = o.AZAT.Provision(ctx, o.logger.Named("azat"), o.storage, rt.httpClient); err != nil {
			return err
		}
	}

	if o.VerifyClientSecret && rt.clientSecret != "" {
		if err := o.verifyClientSecret(ctx); err != nil {
			return fmt.Errorf("oidc: %v", err)
		}
	}

	dctx, cancel := context.WithCancel(ctx)
	o.cancel = cancel
	rt.disc = idp.NewDiscoverer(o.idpConfig())
	go rt.disc.Run(dctx)
	go o.sweepDevices(dctx)
	if o.Session == "cookie" {
		go o.watchRevocations(dctx)
	}
	go o.watchSweep(dctx)
	return nil
}

// idpConfig is what internal/idp needs to talk to this provider.
func (o *OIDC) idpConfig() idp.Config {
	return idp.Config{Issuer: o.rt.issuer, ClientID: o.rt.clientID, ClientSecret: o.rt.clientSecret,
		HTTP: o.rt.httpClient, Logger: o.logger}
}

// verifyClientSecret runs idp.Client.CheckClientSecret against the provider now.
func (o *OIDC) verifyClientSecret(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, time.Duration(o.IdPTimeout))
	defer cancel()
	p, err := idp.Discover(cctx, o.idpConfig())
	if err != nil {
		o.logger.Warn("verify_client_secret: provider unreachable; not checked", errField(err))
		return nil
	}
	redirect := o.rt.redirectURL
	if redirect == "" {
		redirect = "http://localhost" + o.rt.callbackPath
	}
	ok, err := p.CheckClientSecret(cctx, redirect)
	if err != nil {
		return err
	}
	if ok {
		o.logger.Info("client secret accepted by the provider", zap.String("client_id", o.rt.clientID))
	} else {
		o.logger.Warn("verify_client_secret: inconclusive answer from the provider", zap.String("client_id", o.rt.clientID))
	}
	return nil
}

// Validate checks the configuration and gives errors a person can act on.
func (o *OIDC) Validate() error {
	if len(o.Providers) > 0 {
		if o.Site == "" && o.Namespace == "" {
			return errors.New("oidc: site is required: the site's address, e.g. \"https://files.example.com\" (the Caddyfile sets it from the site block; a JSON config must give it, or a namespace)")
		}
		return o.validateProviders()
	}
	if o.Name != "" && !validProviderName(o.Name) {
		return fmt.Errorf("oidc: provider name %q must be 1 to 32 lowercase letters, digits or '-'", o.Name)
	}
	if o.DefaultProvider != "" {
		return errors.New("oidc: default_provider needs provider blocks")
	}
	if o.Issuer == "" {
		return errors.New("oidc: issuer is required")
	}
	if !strings.Contains(o.Issuer, "{") {
		u, err := url.Parse(o.Issuer)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("oidc: issuer %q must be an absolute http(s) URL", o.Issuer)
		}
	}
	if o.ClientID == "" {
		return errors.New("oidc: client_id is required")
	}
	if o.Site == "" && o.Namespace == "" {
		// Without either, sites of one provider and client would share a
		// namespace (sessions, grants, device codes, AZAT keys).
		return errors.New("oidc: site is required: the site's address, e.g. \"https://files.example.com\" (the Caddyfile sets it from the site block; a JSON config must give it, or a namespace)")
	}
	if o.Namespace != "" && !validNamespaceName(o.Namespace) {
		return fmt.Errorf("oidc: namespace %q must be 1 to 64 letters, digits, '.', '_' or '-'", o.Namespace)
	}
	if !slices.Contains(o.Scopes, "openid") {
		return errors.New("oidc: scopes must contain openid")
	}
	switch o.Session {
	case "cookie", "store":
	default:
		return fmt.Errorf("oidc: session must be cookie or store, not %q", o.Session)
	}
	if o.CookieName != "" && !validCookieName(o.CookieName) {
		return fmt.Errorf("oidc: cookie_name %q must be 1 to 64 letters, digits or !#$%%&'*+-.^_`|~", o.CookieName)
	}
	if n := strings.ToLower(o.CookieName); strings.HasPrefix(n, "__host-") || strings.HasPrefix(n, "__secure-") {
		return fmt.Errorf("oidc: cookie_name %q: the __Host- prefix is added by the module (see cookie_host_prefix)", o.CookieName)
	}
	switch o.PassToken {
	case "access", "id", "none":
	default:
		return fmt.Errorf("oidc: pass_token must be access, id or none, not %q", o.PassToken)
	}
	switch strings.ToLower(o.CookieSameSite) {
	case "lax", "strict":
	case "none":
		if o.CookieSecure != nil && !*o.CookieSecure {
			return errors.New("oidc: cookie_samesite none requires Secure cookies")
		}
	default:
		return fmt.Errorf("oidc: cookie_samesite must be lax, strict or none, not %q", o.CookieSameSite)
	}
	if o.SessionLifetime < 0 || o.RefreshBefore < 0 || o.IdPTimeout < 0 {
		return errors.New("oidc: durations must be positive")
	}
	if time.Duration(o.RefreshBefore) >= time.Duration(o.SessionLifetime) {
		return errors.New("oidc: refresh_before must be shorter than session_lifetime")
	}
	for k := range o.AuthParams {
		if reservedAuthParams[k] {
			return fmt.Errorf("oidc: auth_param %q is set by the protocol and cannot be configured", k)
		}
	}
	if o.AZAT != nil {
		if err := o.AZAT.Validate(); err != nil {
			return fmt.Errorf("oidc: %v", err)
		}
	}
	if err := o.validateBearer(); err != nil {
		return err
	}
	for _, r := range o.RequireClaims {
		if r.Path == "" || len(r.Values) == 0 {
			return errors.New("oidc: require_claim needs a claim path and at least one value")
		}
	}
	for _, r := range o.RequireRoles {
		if len(r) == 0 {
			return errors.New("oidc: require_role needs at least one role")
		}
	}
	return nil
}

// Cleanup stops background discovery.
func (o *OIDC) Cleanup() error {
	if o.providers != nil {
		for _, c := range o.providers.list {
			_ = c.Cleanup()
		}
	}
	if o.cancel != nil {
		o.cancel()
	}
	return nil
}

// runtime holds what Provision derives from the configuration: resolved
// secrets, the sealer, caches. It is never serialized.
type runtime struct {
	issuer           string
	clientID         string
	clientSecret     string
	audience         []string
	redirectURL      string
	postLogoutURL    string
	introspectionURL string
	httpClient       *http.Client
	sealer           *seal.Sealer
	disc             *idp.Discoverer
	refreshes        *singleflight.Group
	recent           recentResults[*session] // session refreshes by refreshKey
	refused          recentResults[bool]     // refreshKeys the provider refused
	usedStates       *expiry.Map[string, struct{}]
	introspected     *expiry.Map[[32]byte, *identity]
	remote           *remoteChecks
	// sessions is where sessions live (`session`); stored is the session
	// store of the namespace, which back-channel logouts search whatever
	// the mode (it is sessions with `session store`).
	sessions sessionBackend
	stored   *storedSessions
	unstored recentResults[*unstoredGrant] // refreshed grants not yet stored
	device   deviceLimits
	revoked  revocations
	mu       sync.Mutex
	// sweepMarkers is where the sweep of back-channel replay markers goes
	// on next run.
	sweepMarkers listCursor
	// ns is the namespace id (see namespace.go); o.storage is confined to it.
	ns string
	// root is the prefix of the keys given to o.storage (ends in /).
	root string
	// identityHeaders are the request headers removed before authentication.
	identityHeaders *headerSet
	// callbackPath is the path of the callback route (its redirect_uri).
	callbackPath string
	// providerQuery is "provider=<name>" for one of several providers (added
	// to the login and device URLs it hands out), else "".
	providerQuery string
	// cookieMarker is in every Cookie line holding a session chunk of this
	// handler ("<cookie_name>_").
	cookieMarker string
	// m are the handler's counters (labelled with its provider).
	m providerMetrics
	// siblings are the site's other providers' handlers, whose cookies this
	// one strips from upstream requests and ends at a login.
	siblings []*OIDC
}

// key is the storage key of rel (e.g. "sessions/<hash>"); o.storage puts it
// in this handler's namespace.
func (o *OIDC) key(rel string) string { return o.rt.root + rel }

// provider is one discovered OpenID Provider: every call to it and every
// check of its tokens' signatures lives in internal/idp.
type provider = idp.Client

// reservedAuthParams cannot be set with auth_param.
var reservedAuthParams = map[string]bool{
	"response_type": true, "client_id": true, "redirect_uri": true, "scope": true,
	"state": true, "nonce": true, "code_challenge": true, "code_challenge_method": true,
}

// validCookieName tells whether name is an RFC 6265 cookie name (an RFC 7230
// token) of reasonable length; chunk suffixes are added to it.
func validCookieName(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for _, c := range []byte(name) {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// Interface guards
var (
	_ caddy.Provisioner           = (*OIDC)(nil)
	_ caddy.Validator             = (*OIDC)(nil)
	_ caddy.CleanerUpper          = (*OIDC)(nil)
	_ caddyhttp.MiddlewareHandler = (*OIDC)(nil)
)
