package testdex

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/oauth2"
)

// Defaults. They differ from testop's on purpose, so that a test with both
// providers notices when tokens, clients or users get mixed up.
const (
	// DefaultClientID / DefaultClientSecret: the confidential static client
	// (client_secret_basic or client_secret_post).
	DefaultClientID     = "dex-web"
	DefaultClientSecret = "dex-web-secret"
	// DefaultPublicClientID: a public static client (no secret). Without
	// Options.PublicRedirectURIs dex accepts any http://localhost[:port]/...
	// or http://<loopback IP>[:port]/... redirect URI for it.
	DefaultPublicClientID = "dex-public"

	// DefaultRedirectURI is the confidential client's redirect URI when
	// Options.RedirectURIs is empty. dex compares redirect URIs exactly (no
	// globs, no "any port"), so a test whose RP listens elsewhere must pass
	// its callback URL in Options.RedirectURIs.
	DefaultRedirectURI = "http://127.0.0.1:5555/callback"

	// The default user (Options.Users nil). dex's local connector logs in by
	// email: the login form's "Email Address" field, and the username
	// parameter of the password grant, take Email.
	DefaultEmail    = "dex-user@example.com"
	DefaultPassword = "dex-password"
	// DefaultUsername is the "name" claim (dex's Username).
	DefaultUsername = "dex-user"
	// DefaultPreferredUsername is the "preferred_username" claim.
	DefaultPreferredUsername = "dexuser"
	// DefaultUserID is dex's user ID. The "sub" claim is not this but
	// Subject(DefaultUserID): dex encodes user ID and connector ID together.
	DefaultUserID = "dex-user-id-1"

	// The second default user.
	DefaultEmail2    = "dex-user2@example.com"
	DefaultPassword2 = "dex-password2"
	DefaultUsername2 = "dex-user2"
	DefaultUserID2   = "dex-user-id-2"

	// LocalConnectorID is the connector ID of dex's password database
	// (enablePasswordDB), part of every subject.
	LocalConnectorID = "local"
)

// DefaultGroups are the default user's groups ("groups" claim, only with scope
// groups); the second default user has DefaultGroups2.
var (
	DefaultGroups  = []string{"dex-admins", "dex-users"}
	DefaultGroups2 = []string{"dex-users"}
)

// DefaultScopes: what PasswordGrant and OAuth2Config ask for without scopes.
// dex answers invalid_request for a scope it does not know (anything but
// openid, profile, email, groups, offline_access, federated:id and
// audience:server:client_id:<id>).
var DefaultScopes = []string{"openid", "profile", "email", "groups", "offline_access"}

// Endpoint paths, relative to the issuer (which has a path: see
// Options.IssuerPath).
const (
	PathDiscovery  = "/.well-known/openid-configuration"
	PathAuthorize  = "/auth"
	PathToken      = "/token"
	PathKeys       = "/keys"
	PathUserinfo   = "/userinfo"
	PathIntrospect = "/token/introspect"
	PathDeviceCode = "/device/code"
	PathDevice     = "/device"
	// PathPasswordLogin is the local connector's login form (GET shows it,
	// POST with login and password submits it; query state=<auth request>).
	PathPasswordLogin = "/auth/local/login"
	PathApproval      = "/approval"
)

// Grant types dex knows (for Options.GrantTypes).
const (
	GrantAuthorizationCode = "authorization_code"
	GrantRefreshToken      = "refresh_token"
	GrantPassword          = "password"
	GrantDeviceCode        = "urn:ietf:params:oauth:grant-type:device_code"
	GrantTokenExchange     = "urn:ietf:params:oauth:grant-type:token-exchange"
)

// User is a static password of dex's password database.
type User struct {
	Email    string // the login name; required
	Password string // required; stored bcrypt-hashed (cost 10, dex's minimum)
	// Username: the "name" claim (scope profile).
	Username string
	// PreferredUsername: the "preferred_username" claim (scope profile).
	PreferredUsername string
	// UserID: dex's user ID; "sub" is Subject(UserID). Required.
	UserID string
	// Groups: the "groups" claim (scope groups).
	Groups []string
	// EmailUnverified makes email_verified false (dex's default is true).
	EmailUnverified bool
}

// Options configures a dex. The zero value is usable.
type Options struct {
	// IssuerPath is the issuer URL's path; default "/dex" (as dex's own
	// examples, so RPs meet an issuer with a path). "/" serves at the root.
	IssuerPath string

	// ClientID / ClientSecret of the confidential static client; default
	// DefaultClientID / DefaultClientSecret.
	ClientID     string
	ClientSecret string
	// RedirectURIs of the confidential client, compared exactly by dex;
	// default [DefaultRedirectURI].
	RedirectURIs []string
	// PublicClientID of the public static client; default
	// DefaultPublicClientID. NoPublicClient leaves it out.
	PublicClientID string
	NoPublicClient bool
	// PublicRedirectURIs of the public client. Empty (the default) lets dex
	// accept any loopback http redirect URI for it (and the out-of-band and
	// device callbacks); non-empty restricts it to exactly these.
	PublicRedirectURIs []string

	// Users of the password database; nil means the two default users.
	Users []User

	// GrantTypes allowed at the token endpoint (and advertised); default
	// authorization_code, refresh_token, password and device_code. dex
	// drops what it does not support (token exchange needs a connector that
	// can verify tokens; the local one cannot).
	GrantTypes []string
	// NoPasswordGrant leaves out oauth2.passwordConnector, so the password
	// grant is refused (unsupported_grant_type) whatever GrantTypes says.
	NoPasswordGrant bool

	// ShowApprovalScreen makes dex ask the user to grant access after login
	// (oauth2.skipApprovalScreen false). Login approves it.
	ShowApprovalScreen bool

	// IDTokenLifetime: expiry.idTokens, default 24h (dex's). dex's access
	// tokens are JWTs with the same lifetime (there is no separate setting).
	IDTokenLifetime time.Duration
	// Refresh token policy (expiry.refreshTokens). Zero values keep dex's
	// defaults: rotation on, no reuse interval, no expiry.
	DisableRefreshTokenRotation bool
	// RefreshTokenReuseInterval: how long after a rotation the previous
	// refresh token still works (dex returns the same new one).
	RefreshTokenReuseInterval time.Duration
	// RefreshTokenAbsoluteLifetime: refresh fails this long after login.
	RefreshTokenAbsoluteLifetime time.Duration
	// RefreshTokenValidIfNotUsedFor: refresh fails after this long unused.
	RefreshTokenValidIfNotUsedFor time.Duration
	// AuthRequestLifetime: expiry.authRequests (dex's default 24h).
	AuthRequestLifetime time.Duration
	// DeviceRequestLifetime: expiry.deviceRequests (dex's default 5m).
	DeviceRequestLifetime time.Duration
	// SigningKeyRotation: signer.config.keysRotationPeriod (dex's default
	// 6h). dex keeps previous keys in the JWKS while tokens signed with them
	// can be valid.
	SigningKeyRotation time.Duration

	// LogLevel: dex's logger.level, default "debug". The logs go to the
	// test log when the test fails (and to Logs).
	LogLevel string
	// ExtraConfig is merged into dex's configuration at the top level
	// (JSON values, e.g. {"frontend": {"theme": "dark"}}); a key here
	// replaces the generated one.
	ExtraConfig map[string]any
}

// Dex is a running dex process. All methods are safe for concurrent use.
type Dex struct {
	issuer string
	opts   Options
	users  []User

	cmd     *exec.Cmd
	logs    *syncBuffer
	exited  chan struct{} // closed when the process has exited
	waitErr error         // set before exited is closed
	closing chan struct{} // closed by Close before it signals the process
	once    sync.Once
}

// Start builds dex (once per machine; see Binary), starts it on 127.0.0.1
// with a free port and memory storage, and waits until its discovery
// document answers. It is stopped on t.Cleanup; if the test failed, dex's
// log goes to the test log. If dex exits on its own before that, the test
// fails. A configuration dex refuses, or one dex does not start with within
// 60s, fails the test at once.
func Start(t testing.TB, opts Options) *Dex {
	t.Helper()
	bin := Binary(t)
	opts, users, err := withDefaults(opts)
	if err != nil {
		t.Fatalf("testdex: %v", err)
	}
	dir := t.TempDir()

	// dex listens by itself, so the port is picked here, freed, and given to
	// it; when another process takes it in between, dex fails to listen and
	// is started again on another port.
	var lastErr error
	for attempt := 1; attempt <= 5; attempt++ {
		d, retry, err := start(t, bin, dir, opts, users)
		if err == nil {
			return d
		}
		lastErr = err
		if !retry {
			break
		}
		t.Logf("testdex: attempt %d: %v; retrying on another port", attempt, err)
	}
	t.Fatalf("testdex: %v", lastErr)
	return nil
}

func withDefaults(opts Options) (Options, []User, error) {
	if opts.IssuerPath == "" {
		opts.IssuerPath = "/dex"
	}
	if !strings.HasPrefix(opts.IssuerPath, "/") {
		return opts, nil, fmt.Errorf("IssuerPath %q does not start with /", opts.IssuerPath)
	}
	if opts.IssuerPath == "/" {
		opts.IssuerPath = ""
	}
	opts.IssuerPath = strings.TrimSuffix(opts.IssuerPath, "/")
	if opts.ClientID == "" {
		opts.ClientID = DefaultClientID
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = DefaultClientSecret
	}
	if len(opts.RedirectURIs) == 0 {
		opts.RedirectURIs = []string{DefaultRedirectURI}
	}
	if opts.PublicClientID == "" {
		opts.PublicClientID = DefaultPublicClientID
	}
	if !opts.NoPublicClient && opts.PublicClientID == opts.ClientID {
		return opts, nil, fmt.Errorf("PublicClientID and ClientID are both %q", opts.ClientID)
	}
	if len(opts.GrantTypes) == 0 {
		opts.GrantTypes = []string{GrantAuthorizationCode, GrantRefreshToken, GrantPassword, GrantDeviceCode}
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "debug"
	}
	users := opts.Users
	if users == nil {
		users = []User{
			{Email: DefaultEmail, Password: DefaultPassword, Username: DefaultUsername,
				PreferredUsername: DefaultPreferredUsername, UserID: DefaultUserID, Groups: DefaultGroups},
			{Email: DefaultEmail2, Password: DefaultPassword2, Username: DefaultUsername2,
				UserID: DefaultUserID2, Groups: DefaultGroups2},
		}
	}
	if len(users) == 0 {
		return opts, nil, errors.New("Users is empty (nil gives the default users)")
	}
	users = slices.Clone(users)
	for i, u := range users {
		if u.Email == "" || u.Password == "" || u.UserID == "" {
			return opts, nil, fmt.Errorf("user %d: Email, Password and UserID are required", i)
		}
		users[i].Groups = slices.Clone(u.Groups)
	}
	return opts, users, nil
}

// config is dex's configuration file (dex reads YAML; JSON is YAML).
func config(issuer, addr string, opts Options, users []User) ([]byte, error) {
	clients := []map[string]any{{
		"id":           opts.ClientID,
		"secret":       opts.ClientSecret,
		"name":         "caddy-oidc test client",
		"redirectURIs": opts.RedirectURIs,
	}}
	if !opts.NoPublicClient {
		pub := map[string]any{
			"id":     opts.PublicClientID,
			"public": true,
			"name":   "caddy-oidc test public client",
		}
		if len(opts.PublicRedirectURIs) > 0 {
			pub["redirectURIs"] = opts.PublicRedirectURIs
		}
		clients = append(clients, pub)
	}
	var passwords []map[string]any
	for _, u := range users {
		hash, err := bcrypt.GenerateFromPassword([]byte(u.Password), bcrypt.DefaultCost)
		if err != nil {
			return nil, err
		}
		p := map[string]any{
			"email":         u.Email,
			"hash":          string(hash),
			"username":      u.Username,
			"userID":        u.UserID,
			"emailVerified": !u.EmailUnverified,
		}
		if u.PreferredUsername != "" {
			p["preferredUsername"] = u.PreferredUsername
		}
		if len(u.Groups) > 0 {
			p["groups"] = u.Groups
		}
		passwords = append(passwords, p)
	}
	oauth2 := map[string]any{
		"grantTypes":         opts.GrantTypes,
		"skipApprovalScreen": !opts.ShowApprovalScreen,
		"responseTypes":      []string{"code"},
	}
	if !opts.NoPasswordGrant {
		oauth2["passwordConnector"] = LocalConnectorID
	}
	expiry := map[string]any{}
	dur := func(key string, d time.Duration) {
		if d > 0 {
			expiry[key] = d.String()
		}
	}
	dur("idTokens", opts.IDTokenLifetime)
	dur("authRequests", opts.AuthRequestLifetime)
	dur("deviceRequests", opts.DeviceRequestLifetime)
	refresh := map[string]any{}
	if opts.DisableRefreshTokenRotation {
		refresh["disableRotation"] = true
	}
	if opts.RefreshTokenReuseInterval > 0 {
		refresh["reuseInterval"] = opts.RefreshTokenReuseInterval.String()
	}
	if opts.RefreshTokenAbsoluteLifetime > 0 {
		refresh["absoluteLifetime"] = opts.RefreshTokenAbsoluteLifetime.String()
	}
	if opts.RefreshTokenValidIfNotUsedFor > 0 {
		refresh["validIfNotUsedFor"] = opts.RefreshTokenValidIfNotUsedFor.String()
	}
	if len(refresh) > 0 {
		expiry["refreshTokens"] = refresh
	}

	cfg := map[string]any{
		"issuer":           issuer,
		"storage":          map[string]any{"type": "memory"},
		"web":              map[string]any{"http": addr},
		"logger":           map[string]any{"level": opts.LogLevel, "format": "text"},
		"oauth2":           oauth2,
		"expiry":           expiry,
		"staticClients":    clients,
		"enablePasswordDB": true,
		"staticPasswords":  passwords,
	}
	if opts.SigningKeyRotation > 0 {
		cfg["signer"] = map[string]any{
			"type":   "local",
			"config": map[string]any{"keysRotationPeriod": opts.SigningKeyRotation.String()},
		}
	}
	for k, v := range opts.ExtraConfig {
		cfg[k] = v
	}
	return json.MarshalIndent(cfg, "", "  ")
}

// start runs dex once; retry reports a failure to listen (port taken).
func start(t testing.TB, bin, dir string, opts Options, users []User) (d *Dex, retry bool, err error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, false, err
	}
	issuer := "http://" + addr + opts.IssuerPath
	cfg, err := config(issuer, addr, opts, users)
	if err != nil {
		return nil, false, err
	}
	cfgFile := filepath.Join(dir, "config-"+strings.ReplaceAll(addr, ":", "-")+".yaml")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		return nil, false, err
	}

	d = &Dex{
		issuer:  issuer,
		opts:    opts,
		users:   users,
		logs:    &syncBuffer{},
		exited:  make(chan struct{}),
		closing: make(chan struct{}),
	}
	d.cmd = exec.Command(bin, "serve", cfgFile)
	d.cmd.Stdout, d.cmd.Stderr = d.logs, d.logs
	d.cmd.Dir = dir
	if err := d.cmd.Start(); err != nil {
		return nil, false, fmt.Errorf("starting dex: %w", err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.exited)
	}()

	if err := d.waitReady(60 * time.Second); err != nil {
		d.stop()
		logs := d.Logs()
		retry = strings.Contains(logs, "address already in use")
		return nil, retry, fmt.Errorf("%v\ndex config:\n%s\ndex log:\n%s", err, cfg, logs)
	}

	t.Cleanup(func() {
		select {
		case <-d.exited:
			// Exited before the test ended, and not through Close.
			select {
			case <-d.closing:
			default:
				t.Errorf("testdex: dex exited during the test (%v); its log:\n%s", d.waitErr, d.Logs())
				return
			}
		default:
		}
		d.Close()
		if t.Failed() {
			t.Logf("testdex: dex log (%s):\n%s", d.issuer, d.Logs())
		}
	})
	return d, false, nil
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := l.Addr().String()
	return addr, l.Close()
}

// waitReady polls the discovery document until it answers 200 with this
// issuer, dex exits, or the timeout passes.
func (d *Dex) waitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	c := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case <-d.exited:
			return fmt.Errorf("dex exited at start-up: %v", d.waitErr)
		default:
		}
		resp, err := c.Get(d.URL(PathDiscovery))
		if err == nil {
			var doc struct {
				Issuer string `json:"issuer"`
			}
			derr := json.NewDecoder(resp.Body).Decode(&doc)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && derr == nil {
				if doc.Issuer != d.issuer {
					return fmt.Errorf("discovery names issuer %q, want %q", doc.Issuer, d.issuer)
				}
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dex did not answer %s within %s (last error: %v)", d.URL(PathDiscovery), timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close stops dex (SIGTERM, then SIGKILL after 5s) and waits for it to exit.
// Start's cleanup calls it; calling it earlier (e.g. to test an OP that went
// away) is fine, and so is calling it twice.
func (d *Dex) Close() {
	d.once.Do(func() {
		close(d.closing)
		d.stop()
	})
}

func (d *Dex) stop() {
	select {
	case <-d.exited:
		return
	default:
	}
	if err := d.cmd.Process.Signal(os.Interrupt); err != nil {
		d.cmd.Process.Kill()
	}
	select {
	case <-d.exited:
	case <-time.After(5 * time.Second):
		d.cmd.Process.Kill()
		<-d.exited
	}
}

// Logs returns what dex has logged so far (text format, level
// Options.LogLevel).
func (d *Dex) Logs() string { return d.logs.String() }

// Issuer returns the issuer URL, e.g. "http://127.0.0.1:41234/dex" (no
// trailing slash).
func (d *Dex) Issuer() string { return d.issuer }

// URL returns the issuer plus path, e.g. URL(PathToken).
func (d *Dex) URL(path string) string { return d.issuer + path }

// WebClient returns the confidential client's credentials.
func (d *Dex) WebClient() (id, secret string) { return d.opts.ClientID, d.opts.ClientSecret }

// ClientID returns the confidential client's id.
func (d *Dex) ClientID() string { return d.opts.ClientID }

// ClientSecret returns the confidential client's secret.
func (d *Dex) ClientSecret() string { return d.opts.ClientSecret }

// PublicClient returns the public client's id ("" with NoPublicClient).
func (d *Dex) PublicClient() (id string) {
	if d.opts.NoPublicClient {
		return ""
	}
	return d.opts.PublicClientID
}

// User returns the first user's login credentials (email and password).
func (d *Dex) User() (email, password string) { return d.users[0].Email, d.users[0].Password }

// Subject returns the first user's "sub" claim; see Subject.
func (d *Dex) Subject() string { return Subject(d.users[0].UserID) }

// Subject returns the "sub" claim dex issues for a user of its password
// database: not the user ID itself but base64url (unpadded) of the protobuf
// message {1: userID, 2: "local"} (dex's internal.IDTokenSubject), e.g.
// "Cg1kZXgtdXNlci1pZC0xEgVsb2NhbA" for DefaultUserID.
func Subject(userID string) string {
	var b []byte
	b = protoString(b, 1, userID)
	b = protoString(b, 2, LocalConnectorID)
	return base64.RawURLEncoding.EncodeToString(b)
}

func protoString(b []byte, field int, s string) []byte {
	if s == "" {
		return b // proto3 omits empty strings
	}
	b = appendVarint(b, uint64(field)<<3|2)
	b = appendVarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// Endpoint returns dex's oauth2 endpoint (client auth in the header; dex
// also takes client_secret_post).
func (d *Dex) Endpoint() oauth2.Endpoint {
	return oauth2.Endpoint{
		AuthURL:       d.URL(PathAuthorize),
		TokenURL:      d.URL(PathToken),
		DeviceAuthURL: d.URL(PathDeviceCode),
		AuthStyle:     oauth2.AuthStyleInHeader,
	}
}

// OAuth2Config returns an oauth2.Config for a client of this dex (secret in
// the Authorization header; client_id in the form if clientSecret is "").
// scopes default to DefaultScopes (dex issues refresh tokens only for
// offline_access, and the groups claim only for groups).
func (d *Dex) OAuth2Config(clientID, clientSecret, redirectURL string, scopes ...string) *oauth2.Config {
	if len(scopes) == 0 {
		scopes = slices.Clone(DefaultScopes)
	}
	ep := d.Endpoint()
	if clientSecret == "" {
		ep.AuthStyle = oauth2.AuthStyleInParams
	}
	return &oauth2.Config{
		ClientID:     clientID,
		ClientSecret: clientSecret,
		Endpoint:     ep,
		RedirectURL:  redirectURL,
		Scopes:       scopes,
	}
}

// WebConfig is OAuth2Config for the confidential client and its first
// redirect URI.
func (d *Dex) WebConfig(scopes ...string) *oauth2.Config {
	return d.OAuth2Config(d.opts.ClientID, d.opts.ClientSecret, d.opts.RedirectURIs[0], scopes...)
}

// PasswordGrant gets tokens for username (a user's email) and password from
// the token endpoint with the resource owner password grant, as the
// confidential client. scopes default to DefaultScopes; dex requires openid.
// The ID token is tok.Extra("id_token").(string); with offline_access there
// is a refresh token. Fails unless the password grant is on (the default).
func (d *Dex) PasswordGrant(ctx context.Context, username, password string, scopes ...string) (*oauth2.Token, error) {
	return d.WebConfig(scopes...).PasswordCredentialsToken(ctx, username, password)
}

// Refresh redeems refreshToken at the token endpoint as the confidential
// client and returns the new tokens (with rotation on, a new refresh token;
// the old one then fails with invalid_request, status 400, after any reuse
// interval; dex gives invalid_grant only for another client's refresh token).
func (d *Dex) Refresh(ctx context.Context, refreshToken string) (*oauth2.Token, error) {
	return d.WebConfig().TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
}

// IDToken returns the id_token of a token response ("" if there is none).
func IDToken(tok *oauth2.Token) string {
	s, _ := tok.Extra("id_token").(string)
	return s
}

// syncBuffer is a bytes.Buffer safe for the process's writes and our reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
