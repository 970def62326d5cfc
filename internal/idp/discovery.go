package idp

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/jws"
)

// Metadata is the part of the discovery document (OpenID Connect Discovery
// 1.0, RFC 8414) this module uses.
type Metadata struct {
	Issuer                string   `json:"issuer"`
	AuthorizationEndpoint string   `json:"authorization_endpoint"`
	TokenEndpoint         string   `json:"token_endpoint"`
	UserinfoEndpoint      string   `json:"userinfo_endpoint"`
	JWKSURI               string   `json:"jwks_uri"`
	RevocationEndpoint    string   `json:"revocation_endpoint"`
	IntrospectionEndpoint string   `json:"introspection_endpoint"`
	EndSessionEndpoint    string   `json:"end_session_endpoint"`
	IDTokenSigningAlgs    []string `json:"id_token_signing_alg_values_supported"`
	CodeChallengeMethods  []string `json:"code_challenge_methods_supported"`
	TokenEndpointAuth     []string `json:"token_endpoint_auth_methods_supported"`
}

// Config is what a Client needs to talk to one provider.
type Config struct {
	Issuer       string
	ClientID     string
	ClientSecret string // "" for a public client
	// HTTP makes every call to the provider; NewHTTPClient bounds it in
	// time and response size.
	HTTP   *http.Client
	Logger *zap.Logger
}

// Client is one discovered OpenID Provider with this relying party's
// credentials: its endpoints, its keys, and every call made to it.
type Client struct {
	cfg      Config
	meta     Metadata
	keys     *KeySet
	idTokens *oidc.IDTokenVerifier // aud must contain client_id
	algs     []string
	// postSecret: the provider takes client_secret_post only.
	postSecret bool
}

// AsymmetricAlgs are the only algorithms accepted on provider-signed tokens:
// "none" and HMAC (whose key would be the client secret) are never accepted.
var AsymmetricAlgs = jws.Asymmetric

// New builds the Client for a provider whose metadata is known, without any
// network call (Discover fetches the metadata first).
func New(cfg Config, m Metadata) *Client {
	if cfg.HTTP == nil {
		cfg.HTTP = NewHTTPClient(10 * time.Second)
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	var algs []string
	for _, a := range m.IDTokenSigningAlgs {
		if AsymmetricAlgs[a] {
			algs = append(algs, a)
		}
	}
	if len(algs) == 0 {
		algs = []string{"RS256"}
	}
	keys := NewKeySet(m.JWKSURI, cfg.HTTP)
	keys.SetLogger(cfg.Logger)
	post := len(m.TokenEndpointAuth) > 0
	for _, a := range m.TokenEndpointAuth {
		if a != "client_secret_post" {
			post = false
		}
	}
	return &Client{
		cfg: cfg, meta: m, keys: keys, algs: algs, postSecret: post,
		idTokens: oidc.NewVerifier(m.Issuer, keys, &oidc.Config{
			ClientID: cfg.ClientID, SupportedSigningAlgs: algs,
		}),
	}
}

// Metadata is the provider's discovery document.
func (c *Client) Metadata() *Metadata { return &c.meta }

// Keys is the provider's key set.
func (c *Client) Keys() *KeySet { return c.keys }

// Algs are the signature algorithms accepted on the provider's tokens.
func (c *Client) Algs() []string { return c.algs }

// Discover fetches and checks the discovery document and builds the Client.
func Discover(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.HTTP == nil {
		cfg.HTTP = NewHTTPClient(10 * time.Second)
	}
	wellKnown := strings.TrimSuffix(cfg.Issuer, "/") + "/.well-known/openid-configuration"
	var m Metadata
	if err := getJSON(ctx, cfg.HTTP, wellKnown, "", &m); err != nil {
		return nil, fmt.Errorf("discovery: %w", err)
	}
	// OpenID Connect Discovery 1.0 §4.3: the issuer must be identical.
	if m.Issuer != cfg.Issuer {
		return nil, fmt.Errorf("discovery: issuer %q does not match the configured issuer %q", m.Issuer, cfg.Issuer)
	}
	if m.AuthorizationEndpoint == "" || m.TokenEndpoint == "" || m.JWKSURI == "" {
		return nil, errors.New("discovery: authorization_endpoint, token_endpoint and jwks_uri are required")
	}
	c := New(cfg, m)
	// Load keys now; failing here is not fatal (refetched on first use).
	_, _ = c.keys.refresh(ctx, fetchInitial)
	return c, nil
}

// Discoverer runs discovery in the background with exponential backoff, so
// that Caddy starts even when the provider is down; requests answer 503
// until discovery succeeds.
type Discoverer struct {
	cfg      Config
	current  atomic.Pointer[Client]
	firstTry chan struct{}
}

// NewDiscoverer returns a Discoverer; Run starts it.
func NewDiscoverer(cfg Config) *Discoverer {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	return &Discoverer{cfg: cfg, firstTry: make(chan struct{})}
}

// Run discovers until it succeeds or ctx ends.
func (d *Discoverer) Run(ctx context.Context) {
	backoff := time.Second
	first := true
	for {
		c, err := Discover(ctx, d.cfg)
		if err == nil {
			d.current.Store(c)
			d.cfg.Logger.Info("provider discovered", zap.String("issuer", d.cfg.Issuer))
		} else {
			d.cfg.Logger.Warn("provider discovery failed; retrying", zap.String("issuer", d.cfg.Issuer),
				zap.Duration("retry_in", backoff), zap.Error(err))
		}
		if first {
			close(d.firstTry)
			first = false
		}
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Minute)
	}
}

// Get returns the Client, waiting for the first discovery attempt (bounded
// by ctx) so that the first requests after start-up are not refused; nil
// while the provider is not discovered.
func (d *Discoverer) Get(ctx context.Context) *Client {
	select {
	case <-d.firstTry:
	case <-ctx.Done():
	}
	return d.current.Load()
}
