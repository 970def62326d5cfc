package azatauth

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// TestMintForLifetime: MintFor signs exp = iat + the lifetime asked for, and
// never more than lifetime (a caller cannot mint a longer-lived token).
func TestMintForLifetime(t *testing.T) {
	st := &certmagic.FileStorage{Path: t.TempDir()}
	c := &Config{GrantSecret: strings.Repeat("g", 32), Issuer: "https://proxy.example"}
	s, err := c.Provision(context.Background(), zap.NewNop(), st, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Grants().Put(ctx, &Grant{Key: "op#alice", RefreshToken: "rt", AccessToken: "at",
		Expiry: time.Now().Add(time.Hour).Unix()}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ ask, want time.Duration }{
		{s.DeviceLifetime(), 24 * time.Hour},
		{2 * time.Hour, 2 * time.Hour},
		{1000 * time.Hour, 168 * time.Hour}, // cut to lifetime
		{0, 168 * time.Hour},
	} {
		m, err := s.MintFor(ctx, "op#alice", "", tt.ask)
		if err != nil {
			t.Fatal(err)
		}
		cl, _, err := s.Verify(ctx, m.Token, "")
		if err != nil {
			t.Fatal(err)
		}
		if got := time.Duration(cl.Expiry-cl.IssuedAt) * time.Second; got != tt.want || m.ExpiresIn != int64(tt.want.Seconds()) || m.ExpiresAt != cl.Expiry {
			t.Errorf("MintFor(%s): exp-iat %s, expires_in %d, want %s", tt.ask, got, m.ExpiresIn, tt.want)
		}
	}
}

// TestDeviceCaddyfile: the device subdirectives parse, and bad ones fail.
func TestDeviceCaddyfile(t *testing.T) {
	var c Config
	d := caddyfile.NewTestDispenser("azat {\n device_lifetime 2h\n device_clients \"caddy oidc-login\" backup\n device_clients ci\n}")
	d.Next()
	if err := c.UnmarshalCaddyfile(d); err != nil {
		t.Fatal(err)
	}
	if time.Duration(c.DeviceLifetime) != 2*time.Hour || strings.Join(c.DeviceClients, ",") != "caddy oidc-login,backup,ci" {
		t.Fatalf("parsed %+v", c)
	}
	for _, bad := range []string{"azat {\n device_lifetime\n}", "azat {\n device_lifetime soon\n}", "azat {\n device_clients\n}"} {
		d := caddyfile.NewTestDispenser(bad)
		d.Next()
		if err := new(Config).UnmarshalCaddyfile(d); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}
