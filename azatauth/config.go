package azatauth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/expiry"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// Config configures AZATs: long-lived access tokens minted by this proxy,
// backed by the user's refresh token kept in Caddy storage.
type Config struct {
	// Lifetime of a minted AZAT. Default: 168h (7 days).
	Lifetime caddy.Duration `json:"lifetime,omitempty"`

	// DeviceLifetime is the lifetime of AZATs minted through the device
	// flow (`caddy oidc-login`, `<routes>/device/token`), which a user
	// approves for a requester they cannot see. At most Lifetime. Default:
	// 24h, or Lifetime when that is shorter.
	DeviceLifetime caddy.Duration `json:"device_lifetime,omitempty"`

	// DeviceClients, when set, lists the only client names (the
	// `client_id` form field of `<routes>/device/code`) that may start the
	// device flow; others get 400 `invalid_client`. The name is still
	// declared by the requester, never authenticated. Default: any name.
	DeviceClients []string `json:"device_clients,omitempty"`

	// Signer selects the signing key: `local` (default: an ES256 key
	// generated once and kept in Caddy storage, or KeyFile) or `kms`
	// (an asymmetric AWS KMS key).
	Signer string `json:"signer,omitempty"`

	// KeyFile is a PEM private key (P-256 or RSA >= 2048) for the local
	// signer, instead of the generated one.
	KeyFile string `json:"key_file,omitempty"`

	// KMSKeyID is the KMS key id, ARN or `alias/...` for the kms signer.
	KMSKeyID string `json:"kms_key_id,omitempty"`

	// KMSRegion overrides the AWS region of the credential chain.
	KMSRegion string `json:"kms_region,omitempty"`

	// KMSEndpoint overrides the KMS endpoint (for example a local emulator).
	KMSEndpoint string `json:"kms_endpoint,omitempty"`

	// JWKSPath is where the public keys are published. Default:
	// `/.well-known/jwks.json`. Set to `off` to not publish.
	JWKSPath string `json:"jwks_path,omitempty"`

	// Issuer is the `iss` of minted AZATs and the only one accepted.
	// Default: the site's origin (scheme://host of the request).
	Issuer string `json:"issuer,omitempty"`

	// Audience is the `aud` of minted AZATs and the only one accepted.
	// Default: the issuer.
	Audience string `json:"audience,omitempty"`

	// GrantSecret encrypts the stored grants (refresh tokens). At least 32
	// bytes; give it as a placeholder. Default: generated once and kept in
	// Caddy storage.
	GrantSecret string `json:"grant_secret,omitempty"`

	// Fallback `access_token` makes `GET /auth/token` answer the plain
	// provider access token when the user has no stored grant, instead of 409.
	Fallback string `json:"fallback,omitempty"`

	// Logout says what a browser logout does to the user's AZATs: `revoke`
	// (default) drops the user's grant, revoking the refresh token at the
	// provider and every AZAT of the user; `keep` leaves the grant, so AZATs
	// (a CLI's, a script's) keep working until revoked at `<routes>/revoke`.
	Logout string `json:"logout,omitempty"`

	// Trust is a JWKS URL of another site whose AZATs this site verifies
	// (with the grant store shared through storage). Without it, keys come
	// from Caddy storage.
	Trust string `json:"trust,omitempty"`

	// VerifyOnly disables minting on this site: it only verifies AZATs.
	VerifyOnly bool `json:"verify_only,omitempty"`

	// GrantCache is how long a grant read from storage is used from memory
	// on the request path. A revocation made on this instance applies at
	// once; one made on another instance sharing the storage within this
	// time. Default: 1s; negative: always read storage.
	GrantCache caddy.Duration `json:"grant_cache,omitempty"`

	// Namespace is set by the oidc handler (never configured): the
	// namespace the grant sealer's key derivation is bound to.
	Namespace string `json:"-"`
	// SiteOrigin is set by the oidc handler: the site's origin from its
	// configuration, the default Issuer.
	SiteOrigin string `json:"-"`
}

const (
	defaultLifetime = 168 * time.Hour
	// defaultDeviceLifetime is the default DeviceLifetime (capped at
	// Lifetime).
	defaultDeviceLifetime = 24 * time.Hour
	defaultJWKSPath       = "/.well-known/jwks.json"
	grantSecretKey        = "caddy-oidc/azat/grant_secret"
	maxVerifiedCache      = 100000
)

// Service is a provisioned AZAT configuration.
type Service struct {
	cfg      *Config
	logger   *zap.Logger
	signer   Signer
	keyring  *Keyring
	grants   *GrantStore
	verified *expiry.Map[[32]byte, verifiedToken]
	ready    atomic.Bool
	issuer   string
	audience string
}

// Provision prepares AZATs: grant store, keyring and signer. A KMS key that
// cannot be loaded yet does not fail start-up: it is retried in the
// background and minting answers 503 meanwhile.
func (c *Config) Provision(ctx context.Context, logger *zap.Logger, st certmagic.Storage, client *http.Client) (*Service, error) {
	if c.Lifetime == 0 {
		c.Lifetime = caddy.Duration(defaultLifetime)
	}
	if c.DeviceLifetime == 0 {
		c.DeviceLifetime = caddy.Duration(min(defaultDeviceLifetime, time.Duration(c.Lifetime)))
	}
	if c.Signer == "" {
		c.Signer = "local"
	}
	if c.JWKSPath == "" {
		c.JWKSPath = defaultJWKSPath
	}
	repl := caddy.NewReplacer()
	s := &Service{cfg: c, logger: logger, verified: expiry.New[[32]byte, verifiedToken](maxVerifiedCache)}
	s.issuer = repl.ReplaceKnown(c.Issuer, "")
	if s.issuer == "" {
		s.issuer = c.SiteOrigin
	}
	s.audience = repl.ReplaceKnown(c.Audience, "")

	secret := ""
	var err error
	if c.GrantSecret != "" {
		if secret, err = repl.ReplaceOrErr(c.GrantSecret, true, true); err != nil {
			return nil, errors.New("azat grant_secret: empty or unknown placeholder")
		}
	} else if secret, err = seal.LoadOrCreateSecret(ctx, st, grantSecretKey); err != nil {
		return nil, fmt.Errorf("azat grant secret from storage: %v", err)
	}
	sealer, err := seal.New([]byte(secret), "azat-grants\x00"+c.Namespace)
	if err != nil {
		return nil, fmt.Errorf("azat grant_secret: %v", err)
	}
	if c.GrantCache == 0 {
		c.GrantCache = caddy.Duration(time.Second)
	}
	s.grants = NewGrantStore(st, sealer).WithCache(time.Duration(c.GrantCache))

	if c.Trust != "" {
		s.keyring = NewRemoteKeyring(repl.ReplaceKnown(c.Trust, ""), client)
	} else {
		s.keyring = NewStorageKeyring(st)
	}
	if c.Trust == "" {
		// A trusted remote JWKS is fetched on first use instead: it may be
		// served by this very Caddy, which does not listen yet.
		if err := s.keyring.Reload(ctx); err != nil {
			logger.Warn("loading AZAT keys failed; retrying on demand", zap.Error(err))
		}
	}
	if c.VerifyOnly {
		return s, nil
	}
	switch c.Signer {
	case "local":
		var priv any
		if c.KeyFile != "" {
			priv, err = LoadPEMFile(repl.ReplaceKnown(c.KeyFile, ""))
		} else {
			priv, err = LoadOrCreateLocalKey(ctx, st)
		}
		if err != nil {
			return nil, fmt.Errorf("azat local signing key: %v", err)
		}
		ls, err := NewLocalSigner(priv)
		if err != nil {
			return nil, fmt.Errorf("azat local signing key: %v", err)
		}
		s.signer = ls
		if err := s.publish(ctx); err != nil {
			return nil, fmt.Errorf("azat: storing public key: %v", err)
		}
	case "kms":
		client, err := NewKMSClient(ctx, repl.ReplaceKnown(c.KMSRegion, ""), repl.ReplaceKnown(c.KMSEndpoint, ""))
		if err != nil {
			return nil, fmt.Errorf("azat kms client: %v", err)
		}
		ks := NewKMSSigner(client, repl.ReplaceKnown(c.KMSKeyID, ""))
		s.signer = ks
		go s.loadKMS(ctx, ks)
	}
	return s, nil
}

// loadKMS fetches the KMS public key, retrying with backoff until it works.
func (s *Service) loadKMS(ctx context.Context, ks *KMSSigner) {
	backoff := time.Second
	for {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := ks.Load(cctx)
		cancel()
		if err == nil {
			if err = s.publish(ctx); err == nil {
				s.logger.Info("AZAT KMS key loaded", zap.String("key_id", ks.keyID))
				return
			}
		}
		s.logger.Warn("AZAT KMS key not available; minting answers 503 until it is",
			zap.String("key_id", ks.keyID), zap.Duration("retry_in", backoff), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, time.Minute)
	}
}

// publish records the signer's public key in the keyring.
func (s *Service) publish(ctx context.Context) error {
	pub, err := s.signer.PublicKey()
	if err != nil {
		return err
	}
	if err := s.keyring.Add(ctx, pub); err != nil {
		return err
	}
	s.ready.Store(true)
	return nil
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	switch c.Signer {
	case "", "local":
		if c.KMSKeyID != "" {
			return errors.New("azat: kms key given with the local signer")
		}
	case "kms":
		if c.KMSKeyID == "" {
			return errors.New("azat: signer kms needs a key id or alias")
		}
		if c.KeyFile != "" {
			return errors.New("azat: key_file is for the local signer")
		}
	default:
		return fmt.Errorf("azat: signer must be local or kms, not %q", c.Signer)
	}
	if c.Lifetime < 0 {
		return errors.New("azat: lifetime must be positive")
	}
	if c.Logout != "" && c.Logout != "revoke" && c.Logout != "keep" {
		return fmt.Errorf("azat: logout must be revoke or keep, not %q", c.Logout)
	}
	if c.Fallback != "" && c.Fallback != "access_token" {
		return fmt.Errorf("azat: fallback must be access_token, not %q", c.Fallback)
	}
	if c.JWKSPath != "" && c.JWKSPath != "off" && !strings.HasPrefix(c.JWKSPath, "/") {
		return errors.New("azat: jwks path must start with /")
	}
	for name, u := range map[string]string{"trust": c.Trust, "issuer": c.Issuer, "kms endpoint": c.KMSEndpoint} {
		if u == "" || strings.Contains(u, "{") {
			continue
		}
		if p, err := url.Parse(u); err != nil || p.Host == "" || (p.Scheme != "https" && p.Scheme != "http") {
			return fmt.Errorf("azat: %s must be an absolute http(s) URL", name)
		}
	}
	if c.DeviceLifetime < 0 {
		return errors.New("azat: device_lifetime must be positive")
	}
	lifetime := time.Duration(c.Lifetime)
	if lifetime == 0 {
		lifetime = defaultLifetime
	}
	if time.Duration(c.DeviceLifetime) > lifetime {
		return fmt.Errorf("azat: device_lifetime (%s) must not be longer than lifetime (%s)",
			time.Duration(c.DeviceLifetime), lifetime)
	}
	for _, n := range c.DeviceClients {
		if !ValidDeviceClient(n) {
			return fmt.Errorf("azat: device_clients: %q must be 1 to 64 printable ASCII characters", n)
		}
	}
	return nil
}

// ValidDeviceClient tells whether name can be a device client name: 1 to 64
// printable ASCII characters (what the approval page shows).
func ValidDeviceClient(name string) bool {
	if name == "" || len(name) > 64 {
		return false
	}
	for _, c := range []byte(name) {
		if c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}
