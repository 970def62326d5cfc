package caddyoidc_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/certmagic"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// failingStorage is a real file storage whose operations can be made to
// fail, registered as the Caddy storage module `failing_test` (fault
// injection for the storage Caddy hands to the module).
type failingStorage struct {
	Root string `json:"root"`
	fs   *certmagic.FileStorage
}

// storageFaults are switched by the tests; one set per test binary.
var storageFaults struct{ load, store, lock, grantLoad atomic.Bool }

var errInjected = errors.New("injected storage fault")

func init() { caddy.RegisterModule(failingStorage{}) }

func (failingStorage) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "caddy.storage.failing_test", New: func() caddy.Module { return new(failingStorage) }}
}

func (f *failingStorage) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.NextArg() {
		return d.ArgErr()
	}
	f.Root = d.Val()
	return nil
}

func (f *failingStorage) CertMagicStorage() (certmagic.Storage, error) {
	return &faultyStore{FileStorage: &certmagic.FileStorage{Path: f.Root}}, nil
}

type faultyStore struct{ *certmagic.FileStorage }

func (s *faultyStore) Load(ctx context.Context, k string) ([]byte, error) {
	if storageFaults.load.Load() && strings.Contains(k, "/sessions/") ||
		storageFaults.grantLoad.Load() && strings.Contains(k, "/azat/grants/") {
		return nil, errInjected
	}
	return s.FileStorage.Load(ctx, k)
}

func (s *faultyStore) Store(ctx context.Context, k string, v []byte) error {
	if storageFaults.store.Load() && strings.HasPrefix(k, "caddy-oidc/") {
		return errInjected
	}
	return s.FileStorage.Store(ctx, k, v)
}

func (s *faultyStore) Lock(ctx context.Context, k string) error {
	if storageFaults.lock.Load() && strings.Contains(k, "/sessions/") {
		return errInjected
	}
	return s.FileStorage.Lock(ctx, k)
}

func TestStorageFaults(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	up := newUpstream(t)
	id, secret := op.WebClient()
	port := freePort(t)
	site := "http://127.0.0.1:" + itoa(port)
	cf := "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage failing_test " + t.TempDir() + "\n}\n" +
		site + " {\n\toidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + id + "\n\t\tclient_secret " + secret +
		"\n\t\tscopes openid profile email offline_access\n\t\tsession store\n\t\trefresh_before 1s" +
		// Every request reads storage (the default 1s session cache would
		// serve the session from memory through a short storage outage).
		"\n\t\tsession_cache -1s\n\t}\n\treverse_proxy " +
		strings.TrimPrefix(up.URL, "http://") + "\n}\n"
	loadCaddyfile(t, cf)
	c := browser()
	login(t, c, op, site, "/")
	t.Cleanup(func() {
		storageFaults.load.Store(false)
		storageFaults.store.Store(false)
		storageFaults.lock.Store(false)
	})

	steps := []struct {
		name   string
		fault  *atomic.Bool
		sleep  time.Duration // let the access token expire first (refresh path)
		status int           // while the fault lasts
	}{
		{"session load fails", &storageFaults.load, 0, http.StatusServiceUnavailable},
		{"lock fails during refresh", &storageFaults.lock, 2500 * time.Millisecond, http.StatusServiceUnavailable},
		// The provider rotated the refresh token: the refreshed session is
		// served from memory and stored once storage works again.
		{"store fails during refresh", &storageFaults.store, 2500 * time.Millisecond, http.StatusOK},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			time.Sleep(st.sleep)
			st.fault.Store(true)
			resp := get(t, c, site+"/api")
			if resp.StatusCode != st.status {
				t.Fatalf("API: %d, want %d", resp.StatusCode, st.status)
			}
			if st.status == http.StatusServiceUnavailable {
				if resp.Header.Get("Retry-After") == "" {
					t.Fatal("no Retry-After")
				}
				resp = get(t, c, site+"/page", navigate...)
				if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(resp.Header.Get("Content-Type"), "text/html") {
					t.Fatalf("browser: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
				}
			}
			st.fault.Store(false)
			// Recovery without restart, and the session was not lost: it
			// still refreshes (with the live refresh token) after the fault.
			if resp := get(t, c, site+"/api"); resp.StatusCode != 200 {
				t.Fatalf("after the fault: %d %s", resp.StatusCode, body(t, resp))
			}
			time.Sleep(2500 * time.Millisecond)
			if resp := get(t, c, site+"/api"); resp.StatusCode != 200 {
				t.Fatalf("refresh after the fault: %d %s", resp.StatusCode, body(t, resp))
			}
		})
	}
}

func TestSlowAndDownProvider(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: 3 * time.Second})
	up := newUpstream(t)
	site := startCaddy(t, oidcBlock(op, "refresh_before 1s", "idp_timeout 1s"), up, "")
	c := browser()
	login(t, c, op, site.URL, "/")
	svc, err := op.ClientCredentialsToken(context.Background(), testop.AudienceScopePrefix+"web")
	if err != nil {
		t.Fatal(err)
	}

	// JWKS and everything down: bearer JWTs keep verifying with cached keys.
	op.SetDown(true)
	if resp := get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+svc.AccessToken); resp.StatusCode != 200 {
		t.Fatalf("bearer with provider down: %d", resp.StatusCode)
	}
	// Sessions with a valid access token need nothing from the provider.
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("session with provider down: %d", resp.StatusCode)
	}
	op.SetDown(false)

	// Slow token endpoint during refresh: bounded by idp_timeout, 503, the
	// session is kept; no worker waits longer than the bound.
	time.Sleep(3500 * time.Millisecond)
	op.SetTokenDelay(5 * time.Second)
	start := time.Now()
	resp := get(t, c, site.URL+"/api")
	took := time.Since(start)
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("slow refresh: %d", resp.StatusCode)
	}
	if took > 3500*time.Millisecond {
		t.Fatalf("slow refresh held the request %v (idp_timeout 1s)", took)
	}
	op.SetTokenDelay(0)
	if resp := get(t, c, site.URL+"/api"); resp.StatusCode != 200 {
		t.Fatalf("after the provider recovered: %d", resp.StatusCode)
	}

	// Slow JWKS: a token with an unknown kid does not hold the request long.
	if err := op.RotateSigningKey(); err != nil {
		t.Fatal(err)
	}
	fresh, err := op.ClientCredentialsToken(context.Background(), testop.AudienceScopePrefix+"web")
	if err != nil {
		t.Fatal(err)
	}
	op.SetDelay(5 * time.Second)
	start = time.Now()
	resp = get(t, browser(), site.URL+"/api", "Authorization", "Bearer "+fresh.AccessToken)
	if took := time.Since(start); took > 3500*time.Millisecond || resp.StatusCode == 200 || resp.StatusCode >= 500 && resp.StatusCode != 503 {
		t.Fatalf("slow JWKS: %d after %v", resp.StatusCode, took)
	}
	op.SetDelay(0)
}

func loadCaddyfile(t *testing.T, cf string) {
	t.Helper()
	cfg, _, err := caddyconfigAdapt(cf)
	if err != nil {
		t.Fatalf("%v\n%s", err, cf)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
}

// TestGrantStoreFaults: AZAT requests while the grant store fails.
func TestGrantStoreFaults(t *testing.T) {
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	up := newUpstream(t)
	id, secret := op.WebClient()
	port := freePort(t)
	site := "http://127.0.0.1:" + itoa(port)
	cf := "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage failing_test " + t.TempDir() + "\n}\n" +
		site + " {\n\toidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + id + "\n\t\tclient_secret " + secret +
		"\n\t\tscopes openid profile email offline_access\n\t\trefresh_before 1s\n\t\tazat {\n\t\t\tgrant_cache -1s\n\t\t}\n\t}\n\treverse_proxy " +
		strings.TrimPrefix(up.URL, "http://") + "\n}\n"
	loadCaddyfile(t, cf)
	t.Cleanup(func() { storageFaults.grantLoad.Store(false); storageFaults.store.Store(false) })
	c := browser()
	login(t, c, op, site, "/")
	m := mintAZAT(t, c, site)
	use := func() int {
		return get(t, browser(), site+"/files/a", "Authorization", "Bearer "+m.Token).StatusCode
	}

	storageFaults.grantLoad.Store(true)
	if s := use(); s != http.StatusServiceUnavailable {
		t.Fatalf("grant load failing: %d", s)
	}
	storageFaults.grantLoad.Store(false)
	if s := use(); s != 200 {
		t.Fatalf("after the load fault: %d", s)
	}

	// The refresh succeeds at the provider but cannot be stored: served from
	// memory, stored later, and the rotated refresh token is not lost.
	time.Sleep(2500 * time.Millisecond)
	storageFaults.store.Store(true)
	if s := use(); s != 200 {
		t.Fatalf("grant store failing during refresh: %d", s)
	}
	storageFaults.store.Store(false)
	for range 2 {
		time.Sleep(2500 * time.Millisecond)
		if s := use(); s != 200 {
			t.Fatalf("refresh after the store fault: %d", s)
		}
	}
}
