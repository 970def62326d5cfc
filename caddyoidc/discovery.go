package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"go.uber.org/zap"
	"golang.org/x/oauth2"
)

// providerMetadata is the part of the discovery document
// (OpenID Connect Discovery 1.0, RFC 8414) this module uses.
type providerMetadata struct {
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
}

// provider is a discovered OpenID Provider: endpoints, keys and verifiers.
type provider struct {
	meta     providerMetadata
	keys     *remoteKeySet
	idTokens *oidc.IDTokenVerifier // aud must contain client_id
	algs     []string
	endpoint oauth2.Endpoint
}

// asymmetricAlgs are the only algorithms accepted on provider-signed tokens:
// "none" and HMAC (whose key would be the client secret) are never accepted.
var asymmetricAlgs = map[string]bool{
	"RS256": true, "RS384": true, "RS512": true, "PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true, "EdDSA": true,
}

// discover fetches and checks the discovery document and builds the provider.
func discover(ctx context.Context, issuer, clientID string, client *http.Client) (*provider, error) {
	wellKnown := strings.TrimSuffix(issuer, "/") + "/.well-known/openid-configuration"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, wellKnown, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("discovery: status %d", resp.StatusCode)
	}
	var m providerMetadata
	if err := json.Unmarshal(body, &m); err != nil {
		return nil, fmt.Errorf("discovery: %v", err)
	}
	// OpenID Connect Discovery 1.0 §4.3: the issuer must be identical.
	if m.Issuer != issuer {
		return nil, fmt.Errorf("discovery: issuer %q does not match the configured issuer %q", m.Issuer, issuer)
	}
	if m.AuthorizationEndpoint == "" || m.TokenEndpoint == "" || m.JWKSURI == "" {
		return nil, errors.New("discovery: authorization_endpoint, token_endpoint and jwks_uri are required")
	}
	var algs []string
	for _, a := range m.IDTokenSigningAlgs {
		if asymmetricAlgs[a] {
			algs = append(algs, a)
		}
	}
	if len(algs) == 0 {
		algs = []string{"RS256"}
	}
	keys := newRemoteKeySet(m.JWKSURI, client)
	p := &provider{
		meta: m,
		keys: keys,
		algs: algs,
		idTokens: oidc.NewVerifier(m.Issuer, keys, &oidc.Config{
			ClientID: clientID, SupportedSigningAlgs: algs,
		}),
		endpoint: oauth2.Endpoint{
			AuthURL:  m.AuthorizationEndpoint,
			TokenURL: m.TokenEndpoint,
		},
	}
	// Load keys now; failing here is not fatal (refetched on first use).
	_, _ = keys.refresh(ctx, fetchInitial)
	return p, nil
}

// discoverer runs discovery in the background with exponential backoff, so
// that Caddy starts even when the provider is down; requests answer 503
// until discovery succeeds.
type discoverer struct {
	issuer, clientID string
	client           *http.Client
	logger           *zap.Logger
	current          atomic.Pointer[provider]
	firstTry         chan struct{}
}

func newDiscoverer(issuer, clientID string, client *http.Client, logger *zap.Logger) *discoverer {
	return &discoverer{issuer: issuer, clientID: clientID, client: client, logger: logger, firstTry: make(chan struct{})}
}

func (d *discoverer) run(ctx context.Context) {
	backoff := time.Second
	first := true
	for {
		p, err := discover(ctx, d.issuer, d.clientID, d.client)
		if err == nil {
			p.keys.setLogger(d.logger)
			d.current.Store(p)
			d.logger.Info("provider discovered", zap.String("issuer", d.issuer))
		} else {
			d.logger.Warn("provider discovery failed; retrying", zap.String("issuer", d.issuer),
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

// get returns the provider, waiting for the first discovery attempt (bounded
// by ctx) so that the first requests after start-up are not refused.
func (d *discoverer) get(ctx context.Context) *provider {
	select {
	case <-d.firstTry:
	case <-ctx.Done():
	}
	return d.current.Load()
}
