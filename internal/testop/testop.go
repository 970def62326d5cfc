package testop

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/op"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/text/language"
)

// Built-in clients and users. Every OP has all of these.
const (
	// WebClientID is a confidential web client (client_secret_basic or
	// client_secret_post) allowed to use authorization_code (PKCE optional),
	// refresh_token and token exchange, with redirect URIs on any port and
	// path of 127.0.0.1 and localhost.
	WebClientID     = "web"
	WebClientSecret = "web-secret"

	// PublicClientID is a public (native, token_endpoint_auth_method none)
	// client: PKCE is mandatory, no secret; same redirect URIs as web.
	PublicClientID = "public"

	// OtherClientID is a second confidential web client, configured like
	// web. Tokens issued to it have aud=["other"]; use it to check that an
	// RP rejects tokens minted for another client.
	OtherClientID     = "other"
	OtherClientSecret = "other-secret"

	// ServiceClientID is zitadel storage's built-in service user "sid1"
	// which may only use the client_credentials grant.
	ServiceClientID     = "sid1"
	ServiceClientSecret = "verysecret"

	// Username / Password: zitadel storage's user "id1" (name "Test User",
	// email test-user@zitadel.ch, verified, locale de, admin). Default
	// groups: ["admin", "users"].
	Username = "test-user@localhost"
	Password = "verysecure"
	// Username2 / Password2: zitadel storage's user "id2" ("Test User2",
	// test-user2@zitadel.ch, not admin). Default groups: ["users"].
	Username2 = "test-user2"
	Password2 = "verysecure"

	// UserID and UserID2 are the "sub" claims of the two users.
	UserID  = "id1"
	UserID2 = "id2"

	// AudienceScopePrefix: a client_credentials request with scope
	// "aud:<x>" gets <x> added to the token's aud (which is otherwise just
	// ["sid1"]). Needed e.g. to let the web client introspect the token or to
	// make a JWT that an RP expecting aud=<x> accepts.
	AudienceScopePrefix = "aud:"
)

// Endpoint paths (relative to the issuer).
const (
	PathDiscovery  = "/.well-known/openid-configuration"
	PathAuthorize  = "/authorize" // op default (exampleop uses "/auth", see newProvider)
	PathToken      = "/oauth/token"
	PathIntrospect = "/oauth/introspect"
	PathUserinfo   = "/userinfo"
	PathRevoke     = "/revoke"
	PathEndSession = "/end_session"
	PathKeys       = "/keys"
	PathLogin      = "/login/username"
	PathLoggedOut  = "/logged-out"
)

// AccessTokenType selects the format of access tokens.
type AccessTokenType int

const (
	// AccessTokenJWT: signed JWT access tokens (default). Claims: iss, sub,
	// aud (= [client_id]), exp, iat, nbf, jti, client_id, plus the groups claim.
	AccessTokenJWT AccessTokenType = iota
	// AccessTokenOpaque: encrypted opaque bearer tokens; validate them with
	// the introspection or userinfo endpoint.
	AccessTokenOpaque
)

// Client is an additional client registered at Start.
type Client struct {
	ID string
	// Secret; empty makes a public client (auth method none, PKCE required).
	Secret string
	// RedirectURIs must match exactly. If both RedirectURIs and
	// RedirectURIGlobs are empty, LoopbackRedirectGlobs are used.
	RedirectURIs []string
	// RedirectURIGlobs use github.com/bmatcuk/doublestar syntax ("**"
	// crosses "/").
	RedirectURIGlobs []string
	// PostLogoutRedirectURIs / Globs for end_session. Globs use path.Match
	// syntax ("*" does not cross "/"). If both are empty,
	// LoopbackPostLogoutGlobs are used.
	PostLogoutRedirectURIs  []string
	PostLogoutRedirectGlobs []string
}

// LoopbackRedirectGlobs match any port and any path on 127.0.0.1 and localhost.
var LoopbackRedirectGlobs = []string{
	"http://127.0.0.1:*/**",
	"http://localhost:*/**",
	"http://127.0.0.1/**",
	"http://localhost/**",
}

// LoopbackPostLogoutGlobs match any port and paths of up to four segments on
// 127.0.0.1 and localhost (end_session matches with path.Match).
var LoopbackPostLogoutGlobs = func() []string {
	var globs []string
	for _, host := range []string{"http://127.0.0.1:*", "http://localhost:*"} {
		p := host
		globs = append(globs, p)
		for range 4 {
			globs = append(globs, p+"/", p+"/*")
			p += "/*"
		}
	}
	return globs
}()

// Options configures an OP. The zero value is usable.
type Options struct {
	// Addr to listen on; default "127.0.0.1:0" (random port).
	Addr string
	// Issuer; default "http://" + the listener's address (no trailing slash).
	Issuer string

	// AccessTokenLifetime; default 5m. Expiry is rounded up to a whole second
	// (JWT exp has second precision).
	AccessTokenLifetime time.Duration
	// AccessTokenType: JWT (default) or opaque.
	AccessTokenType AccessTokenType
	// IDTokenLifetime; default 1h (as in zitadel's storage).
	IDTokenLifetime time.Duration
	// RefreshTokenLifetime; default and maximum 5h (zitadel's storage
	// hard-codes 5h; shorter values are enforced here).
	RefreshTokenLifetime time.Duration
	// DisableRefreshTokenRotation: zitadel's storage always rotates refresh
	// tokens (every refresh returns a new one and invalidates the old one).
	// Set this to hand the same refresh token back on every refresh instead.
	DisableRefreshTokenRotation bool

	// SigningAlgorithm: "RS256" (default) or "ES256".
	SigningAlgorithm string

	// StrictIDTokenClaims keeps zitadel's default: when an access token is
	// issued too (code flow), the ID token carries no profile/email/phone
	// claims, only userinfo has them. By default this package asserts them in
	// the ID token as well (email, email_verified, preferred_username, name,
	// given_name, family_name, locale for the requested scopes).
	StrictIDTokenClaims bool

	// GroupsClaim is the claim name for the users' groups; default "groups".
	// It is added to ID tokens, JWT access tokens, userinfo and introspection
	// regardless of scopes.
	GroupsClaim string
	// Groups by username; nil means the defaults (Username: admin, users;
	// Username2: users).
	Groups map[string][]string

	// Clients registered in addition to the built-in ones.
	Clients []Client

	// Logger for one line per HTTP request; nil is silent. (zitadel's op
	// package itself logs errors via slog.Default.)
	Logger *slog.Logger

	// NoEndSession leaves end_session_endpoint out of the discovery
	// document, as providers without RP-initiated logout do (dex).
	NoEndSession bool
}

// OP is a running OpenID Provider. All methods are safe for concurrent use.
type OP struct {
	// Issuer, e.g. "http://127.0.0.1:41234".
	Issuer string

	srv      *http.Server
	ln       net.Listener
	store    *opStorage
	provider *op.Provider
	handler  http.Handler
	logger   *slog.Logger

	jwksCacheControl atomic.Pointer[string] // see SetJWKSCacheControl

	countMu    sync.Mutex
	tokenCalls map[string]int64
	tokenTime  map[string]time.Duration
	requests   map[string]int64

	hideEndSes bool
	down       atomic.Bool
	drop       atomic.Bool
	tokenDelay atomic.Int64
	delay      atomic.Int64
	failMu     sync.Mutex
	failN      int
	failStatus int
}

// Start starts an OP listening on opts.Addr.
func Start(opts Options) (*OP, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if opts.AccessTokenLifetime <= 0 {
		opts.AccessTokenLifetime = 5 * time.Minute
	}
	if opts.IDTokenLifetime <= 0 {
		opts.IDTokenLifetime = time.Hour
	}
	if opts.RefreshTokenLifetime <= 0 || opts.RefreshTokenLifetime > 5*time.Hour {
		opts.RefreshTokenLifetime = 5 * time.Hour
	}
	if opts.GroupsClaim == "" {
		opts.GroupsClaim = "groups"
	}
	if opts.SigningAlgorithm == "" {
		opts.SigningAlgorithm = string(jose.RS256)
	}
	if opts.Groups == nil {
		opts.Groups = map[string][]string{
			Username:  {"admin", "users"},
			Username2: {"users"},
		}
	}
	atType := op.AccessTokenTypeJWT
	if opts.AccessTokenType == AccessTokenOpaque {
		atType = op.AccessTokenTypeBearer
	}

	keys, err := newKeyring(jose.SignatureAlgorithm(opts.SigningAlgorithm))
	if err != nil {
		return nil, err
	}

	// The user store is built for "localhost" whatever the issuer, so the
	// first user is always test-user@localhost.
	users := storage.NewUserStore("http://localhost:9998/")
	groups := map[string][]string{}
	for name, g := range opts.Groups {
		u := users.GetUserByUsername(name)
		if u == nil {
			return nil, fmt.Errorf("testop: Groups: unknown user %q", name)
		}
		groups[u.ID] = slices.Clone(g)
	}

	// Clients: a per-OP map handed to the storage (never the package-global
	// one, which every OP in the process would share) plus our wrappers.
	all := []Client{
		{ID: WebClientID, Secret: WebClientSecret},
		{ID: PublicClientID},
		{ID: OtherClientID, Secret: OtherClientSecret},
	}
	all = append(all, opts.Clients...)
	storageClients := map[string]*storage.Client{}
	wrapped := map[string]*opClient{}
	for _, c := range all {
		if c.ID == "" || c.ID == ServiceClientID {
			return nil, fmt.Errorf("testop: invalid client id %q", c.ID)
		}
		if _, dup := wrapped[c.ID]; dup {
			return nil, fmt.Errorf("testop: duplicate client id %q", c.ID)
		}
		var sc *storage.Client
		if c.Secret == "" {
			sc = storage.NativeClient(c.ID)
		} else {
			sc = storage.WebClient(c.ID, c.Secret)
		}
		oc := &opClient{
			Client:                sc,
			redirectURIs:          slices.Clone(c.RedirectURIs),
			redirectGlobs:         slices.Clone(c.RedirectURIGlobs),
			postLogoutURIs:        slices.Clone(c.PostLogoutRedirectURIs),
			postLogoutGlobs:       slices.Clone(c.PostLogoutRedirectGlobs),
			accessTokenType:       atType,
			idTokenLifetime:       opts.IDTokenLifetime,
			idTokenUserinfoClaims: !opts.StrictIDTokenClaims,
		}
		if len(oc.redirectURIs) == 0 && len(oc.redirectGlobs) == 0 {
			oc.redirectGlobs = slices.Clone(LoopbackRedirectGlobs)
		}
		if len(oc.postLogoutURIs) == 0 && len(oc.postLogoutGlobs) == 0 {
			oc.postLogoutGlobs = slices.Clone(LoopbackPostLogoutGlobs)
		}
		storageClients[c.ID] = sc
		wrapped[c.ID] = oc
	}

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, err
	}
	issuer := opts.Issuer
	if issuer == "" {
		issuer = "http://" + ln.Addr().String()
	}

	st := &opStorage{
		Storage:              storage.NewStorageWithClients(users, storageClients),
		users:                users,
		clients:              wrapped,
		keys:                 keys,
		accessTokenLifetime:  opts.AccessTokenLifetime,
		refreshTokenLifetime: opts.RefreshTokenLifetime,
		rotateRefreshTokens:  !opts.DisableRefreshTokenRotation,
		accessTokenType:      atType,
		idTokenLifetime:      opts.IDTokenLifetime,
		groupsClaim:          opts.GroupsClaim,
		issuer:               issuer,
		tokens:               map[string]*tokenRecord{},
		refresh:              map[string]*refreshRecord{},
		groups:               groups,
	}

	provider, err := newProvider(issuer, st)
	if err != nil {
		ln.Close()
		return nil, err
	}

	o := &OP{
		Issuer:     issuer,
		ln:         ln,
		store:      st,
		provider:   provider,
		logger:     opts.Logger,
		hideEndSes: opts.NoEndSession,
		tokenCalls: map[string]int64{},
		tokenTime:  map[string]time.Duration{},
		requests:   map[string]int64{},
	}
	o.handler = o.routes()
	o.srv = &http.Server{
		Handler:           o,
		ReadHeaderTimeout: 10 * time.Second,
	}
	go o.srv.Serve(ln)
	return o, nil
}

// newProvider mirrors exampleop.newOP (same config and options) except:
//   - a random per-OP encryption key instead of sha256("test");
//   - no op.WithCustomAuthEndpoint("auth"): in zitadel/oidc v3.48.0 the
//     WithCustom*Endpoint options write through to the package-global
//     op.DefaultEndpoints, a data race when several OPs start concurrently
//     (and a change for every other provider in the process). The default
//     authorization endpoint "/authorize" is used instead.
func newProvider(issuer string, st op.Storage) (*op.Provider, error) {
	var cryptoKey [32]byte
	if _, err := io.ReadFull(rand.Reader, cryptoKey[:]); err != nil {
		return nil, err
	}
	config := &op.Config{
		CryptoKey:                cryptoKey,
		DefaultLogoutRedirectURI: PathLoggedOut,
		CodeMethodS256:           true,
		AuthMethodPost:           true,
		AuthMethodPrivateKeyJWT:  true,
		GrantTypeRefreshToken:    true,
		RequestObjectSupported:   true,
		SupportedUILocales:       []language.Tag{language.English},
	}
	return op.NewOpenIDProvider(issuer, config, st, op.WithAllowInsecure())
}

// Close stops the server and closes all connections.
func (o *OP) Close() error {
	err := o.srv.Close()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// URL returns the issuer plus path.
func (o *OP) URL(path string) string { return strings.TrimSuffix(o.Issuer, "/") + path }

// WebClient returns the confidential web client's credentials.
func (o *OP) WebClient() (id, secret string) { return WebClientID, WebClientSecret }

// PublicClient returns the public (PKCE, no secret) client's id.
func (o *OP) PublicClient() (id string) { return PublicClientID }

// OtherClient returns the credentials of an unrelated confidential client.
func (o *OP) OtherClient() (id, secret string) { return OtherClientID, OtherClientSecret }

// ServiceClient returns the client_credentials client's credentials.
func (o *OP) ServiceClient() (id, secret string) { return ServiceClientID, ServiceClientSecret }

// User returns the main test user's credentials.
func (o *OP) User() (username, password string) { return Username, Password }

// User2 returns the second test user's credentials.
func (o *OP) User2() (username, password string) { return Username2, Password2 }

// SetGroups changes a user's groups for tokens issued from now on.
func (o *OP) SetGroups(username string, groups []string) error {
	u := o.store.users.GetUserByUsername(username)
	if u == nil {
		return fmt.Errorf("testop: unknown user %q", username)
	}
	o.store.mu.Lock()
	defer o.store.mu.Unlock()
	o.store.groups[u.ID] = slices.Clone(groups)
	return nil
}

// Endpoint returns the OP's oauth2 endpoint (client auth in the header).
func (o *OP) Endpoint() oauth2.Endpoint {
	return oauth2.Endpoint{
		AuthURL:   o.URL(PathAuthorize),
		TokenURL:  o.URL(PathToken),
		AuthStyle: oauth2.AuthStyleInHeader,
	}
}

// OAuth2Config returns an oauth2.Config for a client of this OP (secret in
// the Authorization header; client_id in the form if clientSecret is ""). scopes
// default to openid, profile, email, offline_access (zitadel only issues
// refresh tokens when offline_access is requested).
func (o *OP) OAuth2Config(clientID, clientSecret, redirectURL string, scopes ...string) *oauth2.Config {
	if len(scopes) == 0 {
		scopes = []string{"openid", "profile", "email", "offline_access"}
	}
	ep := o.Endpoint()
	if clientSecret == "" {
		ep.AuthStyle = oauth2.AuthStyleInParams // public client: client_id in the form
	}
	return &oauth2.Config{
		ClientID:     clientID,
		ClientSecret: clientSecret,
		Endpoint:     ep,
		RedirectURL:  redirectURL,
		Scopes:       scopes,
	}
}

// ClientCredentialsToken mints a token for the service client through the
// real token endpoint. Scopes "aud:<x>" add <x> to the token's audience.
func (o *OP) ClientCredentialsToken(ctx context.Context, scopes ...string) (*oauth2.Token, error) {
	cfg := clientcredentials.Config{
		ClientID:     ServiceClientID,
		ClientSecret: ServiceClientSecret,
		TokenURL:     o.URL(PathToken),
		Scopes:       scopes,
		AuthStyle:    oauth2.AuthStyleInHeader,
	}
	return cfg.Token(ctx)
}

// TokenCalls returns how many requests with this grant_type reached the token
// endpoint (counted before fault injection, whatever the outcome).
func (o *OP) TokenCalls(grantType string) int64 {
	o.countMu.Lock()
	defer o.countMu.Unlock()
	return o.tokenCalls[grantType]
}

// TokenTime returns the total time the token endpoint took to answer the
// requests with this grant_type, injected delays included: from the request
// reaching the OP to the response written (divide by TokenCalls for the
// mean latency the relying party waits for).
func (o *OP) TokenTime(grantType string) time.Duration {
	o.countMu.Lock()
	defer o.countMu.Unlock()
	return o.tokenTime[grantType]
}

// Requests returns how many requests for this URL path (e.g. PathKeys,
// PathDiscovery) the OP received, counted before fault injection.
func (o *OP) Requests(path string) int64 {
	o.countMu.Lock()
	defer o.countMu.Unlock()
	return o.requests[path]
}

// ResetCounters zeroes TokenCalls and Requests.
func (o *OP) ResetCounters() {
	o.countMu.Lock()
	defer o.countMu.Unlock()
	clear(o.tokenCalls)
	clear(o.tokenTime)
	clear(o.requests)
}

// RotateSigningKey makes the OP sign with a new key (new kid). The old keys
// stay published in the JWKS, so tokens signed before remain verifiable.
func (o *OP) RotateSigningKey() error { return o.store.keys.rotate(true) }

// ReplaceSigningKey makes the OP sign with a new key and stop publishing all
// old ones (tokens signed before no longer verify, at the OP either).
func (o *OP) ReplaceSigningKey() error { return o.store.keys.rotate(false) }

// SigningKeyID returns the kid of the current signing key.
func (o *OP) SigningKeyID() string { return o.store.keys.signing().id }

// PublishedKeyIDs returns the kids in the JWKS, newest first.
func (o *OP) PublishedKeyIDs() []string {
	var ids []string
	for _, k := range o.store.keys.published() {
		ids = append(ids, k.ID())
	}
	return ids
}

// RevokeAllRefreshTokens invalidates every refresh token issued so far
// (further refreshes with them fail with invalid_grant).
func (o *OP) RevokeAllRefreshTokens() { o.store.revokeAllRefreshTokens() }

// SetDown makes every endpoint answer 503 (true) or work normally (false).
func (o *OP) SetDown(down bool) { o.down.Store(down) }

// SetDropConnections makes the OP close every connection without answering.
func (o *OP) SetDropConnections(drop bool) { o.drop.Store(drop) }

// SetTokenDelay delays token endpoint responses by d (0 disables).
func (o *OP) SetTokenDelay(d time.Duration) { o.tokenDelay.Store(int64(d)) }

// SetDelay delays responses of every endpoint by d (0 disables).
func (o *OP) SetDelay(d time.Duration) { o.delay.Store(int64(d)) }

// FailTokenRequests makes the next n token endpoint requests fail with the
// given HTTP status (e.g. 500 or 503) and an OAuth error body.
func (o *OP) FailTokenRequests(n int, status int) {
	o.failMu.Lock()
	defer o.failMu.Unlock()
	o.failN, o.failStatus = n, status
}

func (o *OP) takeTokenFailure() (int, bool) {
	o.failMu.Lock()
	defer o.failMu.Unlock()
	if o.failN <= 0 {
		return 0, false
	}
	o.failN--
	return o.failStatus, true
}
