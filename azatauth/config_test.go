package azatauth

import (
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		c      Config
		errSub string
	}{
		{"defaults", Config{}, ""},
		{"kms", Config{Signer: "kms", KMSKeyID: "alias/x", KMSEndpoint: "http://127.0.0.1:1"}, ""},
		{"kms without key", Config{Signer: "kms"}, "key id"},
		{"kms with key file", Config{Signer: "kms", KMSKeyID: "k", KeyFile: "/k.pem"}, "key_file"},
		{"local with kms key", Config{Signer: "local", KMSKeyID: "k"}, "kms key"},
		{"unknown signer", Config{Signer: "vault"}, "signer"},
		{"negative lifetime", Config{Lifetime: -1}, "lifetime"},
		{"bad fallback", Config{Fallback: "id_token"}, "fallback"},
		{"relative jwks path", Config{JWKSPath: "jwks.json"}, "jwks"},
		{"relative trust", Config{Trust: "other.example/jwks"}, "trust"},
		{"placeholder issuer", Config{Issuer: "{env.ISS}"}, ""},
		{"device lifetime within default lifetime", Config{DeviceLifetime: caddy.Duration(168 * time.Hour)}, ""},
		{"device lifetime over default lifetime", Config{DeviceLifetime: caddy.Duration(169 * time.Hour)}, "device_lifetime"},
		{"device lifetime over lifetime", Config{Lifetime: caddy.Duration(time.Hour), DeviceLifetime: caddy.Duration(2 * time.Hour)}, "device_lifetime"},
		{"negative device lifetime", Config{DeviceLifetime: -1}, "device_lifetime"},
		{"device clients", Config{DeviceClients: []string{"caddy oidc-login", "backup-job"}}, ""},
		{"device client with control character", Config{DeviceClients: []string{"evil\nname"}}, "device_clients"},
		{"empty device client", Config{DeviceClients: []string{""}}, "device_clients"},
	}
	for _, tt := range tests {
		err := tt.c.Validate()
		if tt.errSub == "" && err != nil || tt.errSub != "" && (err == nil || !strings.Contains(err.Error(), tt.errSub)) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.errSub)
		}
	}
}

// TestDeviceLifetimeDefault: device-flow tokens default to 24h, and never
// outlive lifetime when that is shorter.
func TestDeviceLifetimeDefault(t *testing.T) {
	for _, tt := range []struct {
		lifetime, device, want time.Duration
	}{
		{0, 0, 24 * time.Hour},
		{time.Hour, 0, time.Hour},
		{0, 2 * time.Hour, 2 * time.Hour},
	} {
		c := Config{Lifetime: caddy.Duration(tt.lifetime), DeviceLifetime: caddy.Duration(tt.device), VerifyOnly: true}
		s, err := c.Provision(t.Context(), zap.NewNop(), &certmagic.FileStorage{Path: t.TempDir()}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.DeviceLifetime(); got != tt.want || c.Validate() != nil {
			t.Errorf("lifetime %s device_lifetime %s: device lifetime %s (validate %v), want %s", tt.lifetime, tt.device, got, c.Validate(), tt.want)
		}
	}
}
