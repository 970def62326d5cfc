package testop

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/google/uuid"
	"github.com/zitadel/oidc/v3/example/server/storage"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"
)

// opStorage is zitadel's example in-memory storage (embedded, so every
// op.Storage method and every optional interface it implements is promoted)
// with a handful of methods overridden to add what the tests need:
//
//   - configurable access token lifetime (the storage hard-codes 5m),
//   - optional non-rotating refresh tokens and bulk revocation,
//   - per-OP clients wrapped with redirect globs and a configurable access
//     token type,
//   - rotatable signing keys (the storage has one fixed key),
//   - a groups claim, and an audience request for client credentials tokens,
//   - introspection that also works for client credentials tokens.
type opStorage struct {
	*storage.Storage

	users   storage.UserStore
	clients map[string]*opClient // immutable after Start
	keys    *keyring

	accessTokenLifetime  time.Duration
	refreshTokenLifetime time.Duration
	rotateRefreshTokens  bool
	accessTokenType      op.AccessTokenType
	idTokenLifetime      time.Duration
	groupsClaim          string
	issuer               string

	// refreshMu serialises refresh token exchanges so that the public→internal
	// mapping of non-rotating refresh tokens stays consistent.
	refreshMu sync.Mutex

	mu      sync.Mutex
	tokens  map[string]*tokenRecord   // access token ID → record
	refresh map[string]*refreshRecord // refresh token handed to the client → record
	groups  map[string][]string       // user ID → groups
}

type tokenRecord struct {
	subject  string
	clientID string
	audience []string
	scopes   []string
	issuedAt time.Time
	expires  time.Time
}

// op.IDTokenRequest view of a record, used to ask the storage for user claims.
func (t *tokenRecord) GetAMR() []string       { return nil }
func (t *tokenRecord) GetAudience() []string  { return t.audience }
func (t *tokenRecord) GetAuthTime() time.Time { return time.Time{} }
func (t *tokenRecord) GetClientID() string    { return t.clientID }
func (t *tokenRecord) GetScopes() []string    { return t.scopes }
func (t *tokenRecord) GetSubject() string     { return t.subject }

type refreshRecord struct {
	internal string // the refresh token the embedded storage currently knows
	subject  string
	expires  time.Time
	revoked  bool
}

// Error texts of the embedded storage that the overrides need to recognise.
const (
	storageErrTokenExpired = "token is expired"
	storageErrUserNotFound = "user not found"
)

func expiry(now time.Time, lifetime time.Duration) time.Time {
	// JWT exp and expires_in are whole seconds; round up so that a token is
	// never valid for less than the configured lifetime.
	return now.Add(lifetime).Truncate(time.Second).Add(time.Second)
}

func clientIDOf(req op.TokenRequest) string {
	if r, ok := req.(interface{ GetClientID() string }); ok && r.GetClientID() != "" {
		return r.GetClientID()
	}
	// client credentials (*oidc.JWTTokenRequest): the subject is the client.
	return req.GetSubject()
}

func (s *opStorage) recordAccessToken(id string, req op.TokenRequest) time.Time {
	now := time.Now()
	rec := &tokenRecord{
		subject:  req.GetSubject(),
		clientID: clientIDOf(req),
		audience: slices.Clone(req.GetAudience()),
		scopes:   slices.Clone(req.GetScopes()),
		issuedAt: now,
		expires:  expiry(now, s.accessTokenLifetime),
	}
	s.mu.Lock()
	s.tokens[id] = rec
	s.mu.Unlock()
	return rec.expires
}

func (s *opStorage) accessToken(id string) *tokenRecord {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokens[id]
}

// CreateAccessToken overrides the storage to apply the configured lifetime.
func (s *opStorage) CreateAccessToken(ctx context.Context, req op.TokenRequest) (string, time.Time, error) {
	id, _, err := s.Storage.CreateAccessToken(ctx, req)
	if err != nil {
		return "", time.Time{}, err
	}
	return id, s.recordAccessToken(id, req), nil
}

// CreateAccessAndRefreshTokens overrides the storage to apply the configured
// lifetimes and (optionally) to hand out the same refresh token again instead
// of rotating it. The storage itself always rotates.
func (s *opStorage) CreateAccessAndRefreshTokens(ctx context.Context, req op.TokenRequest, current string) (string, string, time.Time, error) {
	_, isExchange := req.(op.TokenExchangeRequest)
	if current == "" || isExchange {
		atID, rt, _, err := s.Storage.CreateAccessAndRefreshTokens(ctx, req, current)
		if err != nil {
			return "", "", time.Time{}, err
		}
		exp := s.recordAccessToken(atID, req)
		s.mu.Lock()
		s.refresh[rt] = &refreshRecord{internal: rt, subject: req.GetSubject(), expires: time.Now().Add(s.refreshTokenLifetime)}
		s.mu.Unlock()
		return atID, rt, exp, nil
	}

	s.refreshMu.Lock()
	defer s.refreshMu.Unlock()

	s.mu.Lock()
	rec := s.refresh[current]
	s.mu.Unlock()
	if rec == nil || rec.revoked {
		return "", "", time.Time{}, oidc.ErrInvalidGrant().WithDescription("invalid refresh_token")
	}
	atID, newInternal, _, err := s.Storage.CreateAccessAndRefreshTokens(ctx, req, rec.internal)
	if err != nil {
		return "", "", time.Time{}, err
	}
	exp := s.recordAccessToken(atID, req)

	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.rotateRefreshTokens {
		rec.internal = newInternal
		return atID, current, exp, nil
	}
	delete(s.refresh, current)
	s.refresh[newInternal] = &refreshRecord{internal: newInternal, subject: rec.subject, expires: time.Now().Add(s.refreshTokenLifetime)}
	return atID, newInternal, exp, nil
}

// TokenRequestByRefreshToken translates the refresh token the client holds
// into the one the storage knows and enforces lifetime / bulk revocation.
func (s *opStorage) TokenRequestByRefreshToken(ctx context.Context, refreshToken string) (op.RefreshTokenRequest, error) {
	s.mu.Lock()
	rec := s.refresh[refreshToken]
	var internal string
	var valid bool
	if rec != nil {
		internal, valid = rec.internal, !rec.revoked && time.Now().Before(rec.expires)
	}
	s.mu.Unlock()
	if !valid {
		return nil, errors.New("invalid refresh_token")
	}
	return s.Storage.TokenRequestByRefreshToken(ctx, internal)
}

// GetRefreshTokenInfo is answered from our own records (the storage's version
// reads its map without holding its lock).
func (s *opStorage) GetRefreshTokenInfo(ctx context.Context, clientID, token string) (string, string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	rec := s.refresh[token]
	if rec == nil || rec.revoked {
		return "", "", op.ErrInvalidRefreshToken
	}
	return rec.subject, rec.internal, nil
}

// RevokeToken delegates to the storage and marks our record as revoked.
func (s *opStorage) RevokeToken(ctx context.Context, tokenIDOrToken, userID, clientID string) *oidc.Error {
	if err := s.Storage.RevokeToken(ctx, tokenIDOrToken, userID, clientID); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range s.refresh {
		if rec.internal == tokenIDOrToken {
			rec.revoked = true
		}
	}
	return nil
}

func (s *opStorage) revokeAllRefreshTokens() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rec := range s.refresh {
		rec.revoked = true
	}
}

// GetClientByClientID returns the per-OP client wrappers (redirect globs,
// configured access token type, ...).
func (s *opStorage) GetClientByClientID(ctx context.Context, clientID string) (op.Client, error) {
	c, ok := s.clients[clientID]
	if !ok {
		return nil, fmt.Errorf("client not found")
	}
	return c, nil
}

// ClientCredentials wraps the storage's built-in service client ("sid1") so
// that it uses the configured access token type.
func (s *opStorage) ClientCredentials(ctx context.Context, clientID, clientSecret string) (op.Client, error) {
	c, err := s.Storage.ClientCredentials(ctx, clientID, clientSecret)
	if err != nil {
		return nil, err
	}
	if sc, ok := c.(*storage.Client); ok {
		return &opClient{Client: sc, accessTokenType: s.accessTokenType, idTokenLifetime: s.idTokenLifetime}, nil
	}
	return c, nil
}

// ClientCredentialsTokenRequest adds "aud:<value>" scopes to the audience of
// the token (the storage only ever uses the service client's own id).
func (s *opStorage) ClientCredentialsTokenRequest(ctx context.Context, clientID string, scopes []string) (op.TokenRequest, error) {
	req, err := s.Storage.ClientCredentialsTokenRequest(ctx, clientID, scopes)
	if err != nil {
		return nil, err
	}
	if jr, ok := req.(*oidc.JWTTokenRequest); ok {
		for _, sc := range scopes {
			if aud, ok := strings.CutPrefix(sc, AudienceScopePrefix); ok && aud != "" && !slices.Contains(jr.Audience, aud) {
				jr.Audience = append(jr.Audience, aud)
			}
		}
	}
	return req, nil
}

func (s *opStorage) userGroups(userID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.groups[userID])
}

func (s *opStorage) addGroups(userID string, set func(string, any)) {
	if s.users.GetUserByID(userID) == nil {
		return
	}
	if g := s.userGroups(userID); g != nil {
		set(s.groupsClaim, g)
	}
}

// SetUserinfoFromRequest (ID token claims) adds the groups claim.
func (s *opStorage) SetUserinfoFromRequest(ctx context.Context, userinfo *oidc.UserInfo, token op.IDTokenRequest, scopes []string) error {
	if err := s.Storage.SetUserinfoFromRequest(ctx, userinfo, token, scopes); err != nil {
		return err
	}
	s.addGroups(token.GetSubject(), userinfo.AppendClaims)
	return nil
}

// GetPrivateClaimsFromScopes (JWT access token claims) adds the groups claim.
func (s *opStorage) GetPrivateClaimsFromScopes(ctx context.Context, userID, clientID string, scopes []string) (map[string]any, error) {
	claims, err := s.Storage.GetPrivateClaimsFromScopes(ctx, userID, clientID, scopes)
	if err != nil {
		return nil, err
	}
	s.addGroups(userID, func(k string, v any) {
		if claims == nil {
			claims = map[string]any{}
		}
		claims[k] = v
	})
	return claims, nil
}

// SetUserinfoFromToken (userinfo endpoint) enforces the configured access
// token lifetime and adds the groups claim.
func (s *opStorage) SetUserinfoFromToken(ctx context.Context, userinfo *oidc.UserInfo, tokenID, subject, origin string) error {
	rec := s.accessToken(tokenID)
	if rec != nil && !time.Now().Before(rec.expires) {
		return errors.New(storageErrTokenExpired)
	}
	err := s.Storage.SetUserinfoFromToken(ctx, userinfo, tokenID, subject, origin)
	if err != nil && rec != nil && err.Error() == storageErrTokenExpired {
		// The storage's own 5 minute clock ran out, but our lifetime is longer.
		err = s.Storage.SetUserinfoFromRequest(ctx, userinfo, rec, rec.scopes)
	}
	if err != nil {
		return err
	}
	s.addGroups(subject, userinfo.AppendClaims)
	return nil
}

// SetIntrospectionFromToken enforces the configured lifetime, also answers for
// client credentials tokens (the storage fails them with "user not found"),
// and fills in the RFC 7662 fields the storage leaves out (aud, iss, iat,
// token_type, sub for tokens without the openid scope).
func (s *opStorage) SetIntrospectionFromToken(ctx context.Context, resp *oidc.IntrospectionResponse, tokenID, subject, clientID string) error {
	rec := s.accessToken(tokenID)
	if rec == nil {
		return s.Storage.SetIntrospectionFromToken(ctx, resp, tokenID, subject, clientID)
	}
	if !time.Now().Before(rec.expires) {
		return errors.New(storageErrTokenExpired)
	}
	if !slices.Contains(rec.audience, clientID) {
		return errors.New("token is not valid for this client")
	}
	err := s.Storage.SetIntrospectionFromToken(ctx, resp, tokenID, subject, clientID)
	if err != nil {
		switch err.Error() {
		case storageErrTokenExpired:
			// storage's fixed 5 minute clock; our lifetime is longer
			if s.users.GetUserByID(subject) != nil {
				info := new(oidc.UserInfo)
				if err := s.Storage.SetUserinfoFromRequest(ctx, info, rec, rec.scopes); err != nil {
					return err
				}
				resp.SetUserInfo(info)
			}
		case storageErrUserNotFound:
			// client credentials token: the subject is a client, not a user
		default:
			return err // unknown, revoked or superseded by a refresh
		}
	}
	resp.Subject = subject
	resp.ClientID = rec.clientID
	resp.Scope = rec.scopes
	resp.Audience = rec.audience
	resp.Issuer = s.issuer
	resp.IssuedAt = oidc.FromTime(rec.issuedAt)
	resp.Expiration = oidc.FromTime(rec.expires)
	resp.TokenType = oidc.BearerToken
	s.addGroups(subject, func(k string, v any) {
		if resp.Claims == nil {
			resp.Claims = map[string]any{}
		}
		resp.Claims[k] = v
	})
	return nil
}

// SigningKey, SignatureAlgorithms and KeySet replace the storage's single
// fixed key with a rotatable key ring.
func (s *opStorage) SigningKey(ctx context.Context) (op.SigningKey, error) {
	return s.keys.signing(), nil
}

func (s *opStorage) SignatureAlgorithms(context.Context) ([]jose.SignatureAlgorithm, error) {
	return []jose.SignatureAlgorithm{s.keys.alg}, nil
}

func (s *opStorage) KeySet(ctx context.Context) ([]op.Key, error) {
	return s.keys.published(), nil
}

// opClient wraps a client created with the storage's constructors
// (storage.WebClient / storage.NativeClient) and overrides what those
// constructors do not let us configure.
type opClient struct {
	*storage.Client
	redirectURIs          []string
	redirectGlobs         []string
	postLogoutURIs        []string
	postLogoutGlobs       []string
	accessTokenType       op.AccessTokenType
	idTokenLifetime       time.Duration
	idTokenUserinfoClaims bool
}

var _ op.HasRedirectGlobs = (*opClient)(nil)

func (c *opClient) RedirectURIs() []string               { return c.redirectURIs }
func (c *opClient) RedirectURIGlobs() []string           { return c.redirectGlobs }
func (c *opClient) PostLogoutRedirectURIs() []string     { return c.postLogoutURIs }
func (c *opClient) PostLogoutRedirectURIGlobs() []string { return c.postLogoutGlobs }
func (c *opClient) AccessTokenType() op.AccessTokenType  { return c.accessTokenType }
func (c *opClient) IDTokenLifetime() time.Duration       { return c.idTokenLifetime }
func (c *opClient) IDTokenUserinfoClaimsAssertion() bool { return c.idTokenUserinfoClaims }
func (c *opClient) IsScopeAllowed(scope string) bool {
	return scope == storage.CustomScope || scope == "groups"
}

// keyring holds the signing key and the keys published in the JWKS.
type keyring struct {
	alg jose.SignatureAlgorithm

	mu      sync.RWMutex
	current *key
	public  []*key // newest first; always contains current
}

type key struct {
	id   string
	alg  jose.SignatureAlgorithm
	priv crypto.Signer
}

// op.SigningKey
func (k *key) SignatureAlgorithm() jose.SignatureAlgorithm { return k.alg }
func (k *key) Key() any                                    { return k.priv }
func (k *key) ID() string                                  { return k.id }

// op.Key (public half)
type pubKey struct{ *key }

func (k pubKey) Algorithm() jose.SignatureAlgorithm { return k.alg }
func (k pubKey) Use() string                        { return "sig" }
func (k pubKey) Key() any                           { return k.priv.Public() }

func newKey(alg jose.SignatureAlgorithm) (*key, error) {
	var priv crypto.Signer
	var err error
	switch alg {
	case jose.RS256:
		priv, err = rsa.GenerateKey(rand.Reader, 2048)
	case jose.ES256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	default:
		return nil, fmt.Errorf("testop: unsupported signing algorithm %q (use RS256 or ES256)", alg)
	}
	if err != nil {
		return nil, err
	}
	return &key{id: uuid.NewString(), alg: alg, priv: priv}, nil
}

func newKeyring(alg jose.SignatureAlgorithm) (*keyring, error) {
	k, err := newKey(alg)
	if err != nil {
		return nil, err
	}
	return &keyring{alg: alg, current: k, public: []*key{k}}, nil
}

func (r *keyring) signing() *key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.current
}

func (r *keyring) published() []op.Key {
	r.mu.RLock()
	defer r.mu.RUnlock()
	keys := make([]op.Key, len(r.public))
	for i, k := range r.public {
		keys[i] = pubKey{k}
	}
	return keys
}

func (r *keyring) rotate(keepOld bool) error {
	k, err := newKey(r.alg)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.current = k
	if keepOld {
		r.public = append([]*key{k}, r.public...)
	} else {
		r.public = []*key{k}
	}
	return nil
}
