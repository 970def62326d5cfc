package caddyoidc

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"github.com/lestrrat-go/jwx/v2/jwa"
	"github.com/lestrrat-go/jwx/v2/jws"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// benchEnv is a provisioned handler against the real test OP, with a
// session cookie, a bearer JWT and an AZAT for the same user.
type benchEnv struct {
	o      *OIDC
	p      *provider
	cookie string // sealed session cookie value
	bearer string // provider JWT access token (client credentials, aud web)
	azat   string
}

var (
	benchOnce sync.Once
	benchE    *benchEnv
	benchErr  error
)

func benchSetup(b *testing.B) *benchEnv {
	b.Helper()
	benchOnce.Do(func() { benchE, benchErr = newBenchEnv() })
	if benchErr != nil {
		b.Fatal(benchErr)
	}
	return benchE
}

func newBenchEnv() (*benchEnv, error) {
	op, err := testop.Start(testop.Options{AccessTokenLifetime: time.Hour})
	if err != nil {
		return nil, err
	}
	o := &OIDC{Issuer: op.Issuer, ClientID: testop.WebClientID, ClientSecret: testop.WebClientSecret,
		Scopes: []string{"openid", "profile", "email", "offline_access"}, CookieSecret: strings.Repeat("s", 32),
		AZAT: &azatauth.Config{Issuer: "https://proxy.example"}}
	dir, err := makeTempDir()
	if err != nil {
		return nil, err
	}
	ctx := context.Background()
	if err := o.provision(ctx, zap.NewNop(), &certmagic.FileStorage{Path: dir}); err != nil {
		return nil, err
	}
	p := o.rt.disc.get(ctx)
	if p == nil {
		return nil, errNoProvider
	}
	cc, err := op.ClientCredentialsToken(ctx, testop.AudienceScopePrefix+testop.WebClientID)
	if err != nil {
		return nil, err
	}
	user, _, err := o.verifyJWTAccessToken(ctx, p, cc.AccessToken)
	if err != nil {
		return nil, err
	}
	claims := map[string]any{"iss": op.Issuer, "sub": "id1", "email": "test-user@zitadel.ch", "name": "Test User",
		"preferred_username": "test-user@localhost", "groups": []any{"admin", "users"}, "email_verified": true,
		"aud": []any{"web"}, "azp": "web", "exp": float64(time.Now().Add(time.Hour).Unix())}
	now := time.Now()
	s := &session{ID: seal.RandomString(32), AccessToken: cc.AccessToken, TokenType: "Bearer",
		RefreshToken: seal.RandomString(32), IDToken: cc.AccessToken, Expiry: now.Add(time.Hour).Unix(),
		Created: now.Unix(), Identity: newIdentity(claims, o.RolesClaim, nil)}
	env := &benchEnv{o: o, p: p, bearer: cc.AccessToken,
		cookie: o.rt.sealer.Seal(encodeSession(s), o.sessionPurpose())}
	key := grantKey(user)
	if err := o.azat.Grants().Put(ctx, &azatauth.Grant{Key: key, AccessToken: cc.AccessToken,
		Expiry: now.Add(time.Hour).Unix(), RefreshToken: "rt", Claims: claims}); err != nil {
		return nil, err
	}
	m, err := o.azat.Mint(ctx, key, "https://proxy.example")
	if err != nil {
		return nil, err
	}
	env.azat = m.Token
	return env, nil
}

var nop = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

func BenchmarkSessionDecodeCold(b *testing.B) {
	e := benchSetup(b)
	b.ReportAllocs()
	for b.Loop() {
		pt, err := e.o.rt.sealer.Open(e.cookie, "session")
		if err != nil {
			b.Fatal(err)
		}
		if _, err := decodeSession(pt); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkSessionLoadWarm(b *testing.B) {
	e := benchSetup(b)
	r := httptest.NewRequest("GET", "http://127.0.0.1/", nil)
	r.AddCookie(&http.Cookie{Name: chunkName(e.o.CookieName, 0), Value: e.cookie})
	b.ReportAllocs()
	for b.Loop() {
		if s, _ := e.o.loadSession(r); s == nil {
			b.Fatal("no session")
		}
	}
}

// jwsFloor is jwx's jws.Verify of the bearer token with its key: the floor
// that cold verification is compared with.
func jwsFloor(e *benchEnv) func(*testing.B) {
	verify := jwsVerifyFunc(e)
	return func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			verify()
		}
	}
}

var (
	floorOnce sync.Once
	floorNs   float64
)

// jwsVerifyFunc returns one jws.Verify of the bearer token with its key.
func jwsVerifyFunc(e *benchEnv) func() {
	msg, _ := jws.ParseString(e.bearer)
	hdr := msg.Signatures()[0].ProtectedHeaders()
	key, _ := e.p.keys.lookup(hdr.KeyID(), hdr.Algorithm().String())
	return func() {
		if _, err := jws.Verify([]byte(e.bearer), jws.WithKey(jwa.RS256, key)); err != nil {
			panic(err)
		}
	}
}

// measure returns the mean ns of n calls of f (after n/10 warm-up calls).
func measure(n int, f func()) float64 {
	for range n / 10 {
		f()
	}
	start := time.Now()
	for range n {
		f()
	}
	return float64(time.Since(start).Nanoseconds()) / float64(n)
}

func BenchmarkJWSVerifyFloor(b *testing.B) { jwsFloor(benchSetup(b))(b) }

func BenchmarkBearerVerifyCold(b *testing.B) {
	e := benchSetup(b)
	floorOnce.Do(func() { floorNs = measure(500, jwsVerifyFunc(e)) })
	ctx := context.Background()
	b.ReportAllocs()
	start := time.Now()
	n := 0
	for b.Loop() {
		if _, _, err := e.o.verifyJWTAccessToken(ctx, e.p, e.bearer); err != nil {
			b.Fatal(err)
		}
		n++
	}
	b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(n)/floorNs, "x-floor")
}

func BenchmarkBearerVerifyWarm(b *testing.B) {
	e := benchSetup(b)
	ctx := context.Background()
	if _, err := e.o.verifyBearer(ctx, e.p, e.bearer); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := e.o.verifyBearer(ctx, e.p, e.bearer); err != nil {
			b.Fatal(err)
		}
	}
}

func benchServe(b *testing.B, set func(*http.Request)) {
	e := benchSetup(b)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("GET", "http://127.0.0.1/api", nil)
		set(r)
		if err := e.o.ServeHTTP(w, r, nop); err != nil {
			b.Fatal(err)
		}
		if r.Header.Get(headerUser) == "" {
			b.Fatalf("not authenticated: %d %s", w.Code, w.Body.String())
		}
	}
}

// BenchmarkServeHTTPFloor is the request construction alone, to subtract.
func BenchmarkServeHTTPFloor(b *testing.B) {
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("GET", "http://127.0.0.1/api", nil)
		r.Header.Set("Authorization", "Bearer x")
		_ = nop.ServeHTTP(w, r)
	}
}

func BenchmarkServeHTTPCookie(b *testing.B) {
	e := benchSetup(b)
	cookie := chunkName(e.o.CookieName, 0) + "=" + e.cookie
	benchServe(b, func(r *http.Request) { r.Header.Set("Cookie", cookie) })
}

func BenchmarkServeHTTPBearer(b *testing.B) {
	e := benchSetup(b)
	benchServe(b, func(r *http.Request) { r.Header.Set("Authorization", "Bearer "+e.bearer) })
}

func BenchmarkServeHTTPAZAT(b *testing.B) {
	e := benchSetup(b)
	benchServe(b, func(r *http.Request) {
		r.Host = "proxy.example"
		r.Header.Set("Authorization", "Bearer "+e.azat)
	})
}

var errNoProvider = errorString("provider not discovered")

type errorString string

func (e errorString) Error() string { return string(e) }

func makeTempDir() (string, error) { return os.MkdirTemp("", "caddy-oidc-bench-") }
