package azatauth

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwk"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/internal/nsstore"

	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/filestorage"
)

// runCommand runs a registered caddy subcommand's function with args.
func runCommand(t *testing.T, fn func(caddycmd.Flags) (int, error), args ...string) error {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	fs.StringP("config", "c", "", "")
	fs.StringP("adapter", "a", "", "")
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	_, err := fn(caddycmd.Flags{FlagSet: fs})
	return err
}

// TestDistrustKid: an operator distrusts a kid (a leaked signing key) with
// `caddy azat-distrust`; every instance sharing the storage refuses tokens
// signed by it once its keyring is read again (keyringRefresh), tokens it
// had verified and cached before included, and stops publishing it; tokens
// of the current key keep working. Distrusting the current key stops
// minting.
func TestDistrustKid(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	// The instances' storage is one namespace of the file storage, as the
	// oidc handler gives it (the command finds the namespaces).
	st := nsstore.New(&certmagic.FileStorage{Path: dir}, "ns1")
	const origin = "https://a.example"
	secret := strings.Repeat("g", 32)

	// The old key signed tokens while it was current (key_file), then the
	// instances moved to the generated key.
	oldPriv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(oldPriv)
	keyFile := filepath.Join(t.TempDir(), "old.pem")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	provision := func(c *Config) *Service {
		t.Helper()
		c.GrantSecret = secret
		s, err := c.Provision(ctx, zap.NewNop(), st, nil)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	oldSite := provision(&Config{KeyFile: keyFile})
	if err := oldSite.Grants().Put(ctx, &Grant{Key: "op#alice", RefreshToken: "rt", AccessToken: "at",
		Expiry: time.Now().Add(time.Hour).Unix()}); err != nil {
		t.Fatal(err)
	}
	leaked, err := oldSite.Mint(ctx, "op#alice", origin)
	if err != nil {
		t.Fatal(err)
	}
	a, b := provision(&Config{}), provision(&Config{}) // two instances, one storage
	current, err := a.Mint(ctx, "op#alice", origin)
	if err != nil {
		t.Fatal(err)
	}
	oldKid, curKid := peekKid(leaked.Token), peekKid(current.Token)
	if oldKid == curKid || b.currentKid() != curKid {
		t.Fatal("the instances do not share the generated key")
	}
	// Before: both verify on both instances (b's cache now holds them).
	for _, s := range []*Service{a, b} {
		for _, tok := range []string{leaked.Token, current.Token} {
			if _, _, err := s.Verify(ctx, tok, origin); err != nil {
				t.Fatalf("before the distrust: %v", err)
			}
		}
	}

	cf := filepath.Join(t.TempDir(), "Caddyfile")
	if err := os.WriteFile(cf, []byte("{\n\tstorage file_system "+dir+"\n}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := runCommand(t, cmdAZATDistrust, "--config", cf, "not-a-key-of-ours"); err == nil {
		t.Fatal("distrusted a kid the storage does not hold")
	}
	if err := runCommand(t, cmdAZATDistrust, "--config", cf, "../../etc/passwd"); err == nil {
		t.Fatal("accepted a kid that is not a kid")
	}
	if err := runCommand(t, cmdAZATDistrust, oldKid); err == nil {
		t.Fatal("ran without --config")
	}
	if err := runCommand(t, cmdAZATDistrust, "--config", cf, oldKid); err != nil {
		t.Fatal(err)
	}

	// Within keyringRefresh an instance may still use what it read before;
	// once due, the next verification reads storage again.
	for _, s := range []*Service{a, b} {
		s.keyring.lastReload.Store(time.Now().Add(-keyringRefresh).UnixNano())
	}
	for name, s := range map[string]*Service{"a": a, "b": b} {
		_, _, err := s.Verify(ctx, leaked.Token, origin)
		if !errors.Is(err, ErrKeyDistrusted) || !errors.Is(err, ErrUnknownKey) {
			t.Fatalf("instance %s: distrusted key's cached token: %v", name, err)
		}
		h := sha256.Sum256([]byte(leaked.Token))
		if _, _, own, err := s.VerifyOwn(ctx, leaked.Token, h, origin); !own || err == nil {
			t.Fatalf("instance %s: VerifyOwn of the distrusted token: own %v, %v", name, own, err)
		}
		if _, _, err := s.Verify(ctx, current.Token, origin); err != nil {
			t.Fatalf("instance %s: current key refused: %v", name, err)
		}
		rec := httptest.NewRecorder()
		s.ServeJWKS(rec, httptest.NewRequest(http.MethodGet, "/.well-known/jwks.json", nil))
		set, err := jwk.Parse(rec.Body.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := set.LookupKeyID(oldKid); ok {
			t.Fatalf("instance %s publishes the distrusted key", name)
		}
		if _, ok := set.LookupKeyID(curKid); !ok {
			t.Fatalf("instance %s does not publish the current key", name)
		}
	}
	if _, err := a.Mint(ctx, "op#alice", origin); err != nil {
		t.Fatalf("minting with the current key: %v", err)
	}
	var out bytes.Buffer
	listKeys(&out, a.keyring)
	if !strings.Contains(out.String(), oldKid) || !strings.Contains(out.String(), "true") {
		t.Fatalf("azat-keys:\n%s", out.String())
	}

	// Distrusting the current key: minting stops, its tokens are refused.
	out.Reset()
	if err := distrust(ctx, &out, st, curKid); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "current signing key") {
		t.Fatalf("no warning about the current key: %s", out.String())
	}
	if err := a.keyring.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Mint(ctx, "op#alice", origin); err == nil {
		t.Fatal("minted with a distrusted key")
	}
	if _, _, err := a.Verify(ctx, current.Token, origin); !errors.Is(err, ErrKeyDistrusted) {
		t.Fatalf("distrusted current key's token: %v", err)
	}
	// An instance starting again cannot undo a distrust.
	c := provision(&Config{})
	if _, _, err := c.Verify(ctx, current.Token, origin); !errors.Is(err, ErrKeyDistrusted) {
		t.Fatalf("after a restart: %v", err)
	}
	var rec DistrustRecord
	b2, err := st.Load(ctx, distrustPrefix+curKid)
	if err != nil || json.Unmarshal(b2, &rec) != nil || rec.Kid != curKid {
		t.Fatalf("distrust record: %s %v", b2, err)
	}
}
