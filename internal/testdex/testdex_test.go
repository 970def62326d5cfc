package testdex_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"

	"github.com/caddy-oidc/caddy-oidc/internal/testdex"
)

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return c
}

func getJSON(t *testing.T, u string, v any) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil && resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	return resp.StatusCode
}

// jwtParts decodes a JWT's header and payload without verifying it.
func jwtParts(t *testing.T, tok string) (header, claims map[string]any) {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("not a JWT: %q", tok)
	}
	for i, dst := range []*map[string]any{&header, &claims} {
		b, err := base64.RawURLEncoding.DecodeString(parts[i])
		if err != nil {
			t.Fatalf("JWT part %d: %v", i, err)
		}
		if err := json.Unmarshal(b, dst); err != nil {
			t.Fatalf("JWT part %d: %v", i, err)
		}
	}
	return header, claims
}

func verifier(t *testing.T, d *testdex.Dex, clientID string) *oidc.IDTokenVerifier {
	t.Helper()
	p, err := oidc.NewProvider(ctx(t), d.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	return p.Verifier(&oidc.Config{ClientID: clientID})
}

func TestDiscovery(t *testing.T) {
	d := testdex.Start(t, testdex.Options{})
	if !strings.HasPrefix(d.Issuer(), "http://127.0.0.1:") || !strings.HasSuffix(d.Issuer(), "/dex") {
		t.Fatalf("issuer %q, want http://127.0.0.1:<port>/dex", d.Issuer())
	}
	var doc map[string]any
	if code := getJSON(t, d.URL(testdex.PathDiscovery), &doc); code != http.StatusOK {
		t.Fatalf("discovery: status %d", code)
	}
	if doc["issuer"] != d.Issuer() {
		t.Errorf("issuer %v, want %s", doc["issuer"], d.Issuer())
	}
	for key, path := range map[string]string{
		"authorization_endpoint":        testdex.PathAuthorize,
		"token_endpoint":                testdex.PathToken,
		"jwks_uri":                      testdex.PathKeys,
		"userinfo_endpoint":             testdex.PathUserinfo,
		"introspection_endpoint":        testdex.PathIntrospect,
		"device_authorization_endpoint": testdex.PathDeviceCode,
	} {
		if doc[key] != d.URL(path) {
			t.Errorf("%s = %v, want %s", key, doc[key], d.URL(path))
		}
	}
	// What dex does not offer (see doc.go): the project's tests rely on
	// these being absent.
	for _, key := range []string{
		"end_session_endpoint", "revocation_endpoint",
		"backchannel_logout_supported", "frontchannel_logout_supported",
		"check_session_iframe", "registration_endpoint",
	} {
		if v, ok := doc[key]; ok {
			t.Errorf("discovery has %s = %v; doc.go says dex has none", key, v)
		}
	}
	grants := strs(doc["grant_types_supported"])
	want := []string{testdex.GrantAuthorizationCode, testdex.GrantPassword, testdex.GrantRefreshToken, testdex.GrantDeviceCode}
	slices.Sort(want)
	if !slices.Equal(grants, want) {
		t.Errorf("grant_types_supported %q, want %q", grants, want)
	}
	if got := strs(doc["response_types_supported"]); !slices.Equal(got, []string{"code"}) {
		t.Errorf("response_types_supported %q", got)
	}
	if got := strs(doc["code_challenge_methods_supported"]); !slices.Contains(got, "S256") {
		t.Errorf("code_challenge_methods_supported %q lacks S256", got)
	}
	if got := strs(doc["id_token_signing_alg_values_supported"]); !slices.Equal(got, []string{"RS256"}) {
		t.Errorf("id_token_signing_alg_values_supported %q", got)
	}

	var jwks struct {
		Keys []map[string]any `json:"keys"`
	}
	if code := getJSON(t, d.URL(testdex.PathKeys), &jwks); code != http.StatusOK || len(jwks.Keys) == 0 {
		t.Fatalf("JWKS: status %d, %d keys", code, len(jwks.Keys))
	}
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	slices.Sort(out)
	return out
}

func TestPasswordGrantTokens(t *testing.T) {
	d := testdex.Start(t, testdex.Options{IDTokenLifetime: 90 * time.Second})
	email, password := d.User()
	tok, err := d.PasswordGrant(ctx(t), email, password)
	if err != nil {
		t.Fatal(err)
	}
	raw := testdex.IDToken(tok)
	if raw == "" || tok.AccessToken == "" || tok.RefreshToken == "" {
		t.Fatalf("token response lacks a token: id_token %t, access %t, refresh %t", raw != "", tok.AccessToken != "", tok.RefreshToken != "")
	}
	v := verifier(t, d, d.ClientID())
	idt, err := v.Verify(ctx(t), raw)
	if err != nil {
		t.Fatalf("ID token does not verify with dex's JWKS: %v", err)
	}
	if idt.Subject != d.Subject() || idt.Subject != testdex.Subject(testdex.DefaultUserID) {
		t.Errorf("sub %q, want %q", idt.Subject, d.Subject())
	}
	if got := idt.Expiry.Sub(idt.IssuedAt); got != 90*time.Second {
		t.Errorf("ID token lifetime %s, want IDTokenLifetime 90s", got)
	}
	var c struct {
		Email             string   `json:"email"`
		EmailVerified     bool     `json:"email_verified"`
		Name              string   `json:"name"`
		PreferredUsername string   `json:"preferred_username"`
		Groups            []string `json:"groups"`
		AtHash            string   `json:"at_hash"`
	}
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if c.Email != testdex.DefaultEmail || !c.EmailVerified || c.Name != testdex.DefaultUsername ||
		c.PreferredUsername != testdex.DefaultPreferredUsername || !slices.Equal(c.Groups, testdex.DefaultGroups) {
		t.Errorf("ID token claims %+v", c)
	}
	if err := idt.VerifyAccessToken(tok.AccessToken); err != nil || c.AtHash == "" {
		t.Errorf("at_hash %q does not match the access token: %v", c.AtHash, err)
	}

	// dex's access token is a JWT shaped like an ID token: same issuer,
	// aud = [client_id], same user claims, signed with the same key, and it
	// passes an ID token verifier for the client (doc.go).
	ath, atc := jwtParts(t, tok.AccessToken)
	if ath["alg"] != "RS256" {
		t.Errorf("access token alg %v", ath["alg"])
	}
	at, err := v.Verify(ctx(t), tok.AccessToken)
	if err != nil {
		t.Fatalf("access token does not pass the ID token verifier: %v", err)
	}
	if at.Subject != idt.Subject || !slices.Equal(at.Audience, []string{d.ClientID()}) {
		t.Errorf("access token sub %q aud %q", at.Subject, at.Audience)
	}
	// at_hash is there too (dex hashes a random ID into it), so every dex
	// access token has an ID token marker for caddyoidc.
	for _, k := range []string{"email", "name", "groups", "at_hash"} {
		if _, ok := atc[k]; !ok {
			t.Errorf("access token lacks claim %s: %v", k, atc)
		}
	}
	// No nonce without one in the request (password grant), never c_hash.
	for _, k := range []string{"scope", "client_id", "azp", "typ", "nonce", "c_hash"} {
		if _, ok := atc[k]; ok {
			t.Errorf("access token has %s (doc.go says it does not): %v", k, atc)
		}
	}

	// Userinfo answers the access token with its claims.
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodGet, d.URL(testdex.PathUserinfo), nil)
	req.Header.Set("Authorization", "Bearer "+tok.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ui map[string]any
	err = json.NewDecoder(resp.Body).Decode(&ui)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || ui["sub"] != d.Subject() || ui["email"] != testdex.DefaultEmail {
		t.Errorf("userinfo: status %d, %v, err %v", resp.StatusCode, ui, err)
	}

	// Refused credentials.
	if _, err := d.PasswordGrant(ctx(t), email, "wrong"); err == nil {
		t.Error("password grant with a wrong password succeeded")
	}
	// The second default user.
	tok2, err := d.PasswordGrant(ctx(t), testdex.DefaultEmail2, testdex.DefaultPassword2, "openid", "groups")
	if err != nil {
		t.Fatal(err)
	}
	idt2, err := v.Verify(ctx(t), testdex.IDToken(tok2))
	if err != nil || idt2.Subject != testdex.Subject(testdex.DefaultUserID2) {
		t.Fatalf("second user: %v, sub %v", err, idt2)
	}
	if tok2.RefreshToken != "" {
		t.Error("refresh token without offline_access")
	}
}

func TestPasswordGrantCanBeOff(t *testing.T) {
	d := testdex.Start(t, testdex.Options{NoPasswordGrant: true, NoPublicClient: true})
	var doc struct {
		Grants []string `json:"grant_types_supported"`
	}
	getJSON(t, d.URL(testdex.PathDiscovery), &doc)
	if slices.Contains(doc.Grants, testdex.GrantPassword) {
		t.Errorf("grant_types_supported %q has password", doc.Grants)
	}
	email, password := d.User()
	_, err := d.PasswordGrant(ctx(t), email, password)
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "unsupported_grant_type" {
		t.Fatalf("password grant: %v, want unsupported_grant_type", err)
	}
	if d.PublicClient() != "" {
		t.Errorf("PublicClient %q with NoPublicClient", d.PublicClient())
	}
}

func TestRefresh(t *testing.T) {
	d := testdex.Start(t, testdex.Options{})
	email, password := d.User()
	tok, err := d.PasswordGrant(ctx(t), email, password)
	if err != nil {
		t.Fatal(err)
	}
	v := verifier(t, d, d.ClientID())
	first, err := v.Verify(ctx(t), testdex.IDToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(1100 * time.Millisecond) // a new iat

	next, err := d.Refresh(ctx(t), tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh: %v", err)
	}
	if next.RefreshToken == "" || next.RefreshToken == tok.RefreshToken {
		t.Errorf("refresh did not rotate the refresh token")
	}
	if next.AccessToken == tok.AccessToken {
		t.Errorf("refresh returned the same access token")
	}
	idt, err := v.Verify(ctx(t), testdex.IDToken(next))
	if err != nil {
		t.Fatalf("refreshed ID token: %v", err)
	}
	if idt.Subject != first.Subject || !idt.IssuedAt.After(first.IssuedAt) {
		t.Errorf("refreshed ID token sub %q iat %s; first sub %q iat %s", idt.Subject, idt.IssuedAt, first.Subject, first.IssuedAt)
	}

	// Rotation (no reuse interval): the old refresh token is now refused.
	_, err = d.Refresh(ctx(t), tok.RefreshToken)
	var re *oauth2.RetrieveError
	if !errors.As(err, &re) || re.ErrorCode != "invalid_request" && re.ErrorCode != "invalid_grant" {
		t.Fatalf("reusing a rotated refresh token: %v, want an OAuth error", err)
	}
	t.Logf("reusing a rotated refresh token: %s %s", re.ErrorCode, re.ErrorDescription)
}

func TestRefreshWithoutRotation(t *testing.T) {
	d := testdex.Start(t, testdex.Options{DisableRefreshTokenRotation: true})
	email, password := d.User()
	tok, err := d.PasswordGrant(ctx(t), email, password)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		next, err := d.Refresh(ctx(t), tok.RefreshToken)
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if next.RefreshToken != tok.RefreshToken {
			t.Fatalf("refresh %d rotated the refresh token with DisableRefreshTokenRotation", i)
		}
	}
}

// rp is a tiny relying party: /login redirects to dex with state, nonce and
// PKCE (S256); /callback exchanges the code and verifies the ID token.
type rp struct {
	srv      *httptest.Server
	cfg      *oauth2.Config
	verifier *oidc.IDTokenVerifier
	// badVerifier sends a wrong code_verifier at the token endpoint.
	badVerifier bool

	mu      sync.Mutex
	pending map[string][2]string // state -> nonce, code_verifier
}

func newRP(t *testing.T) *rp {
	r := &rp{pending: map[string][2]string{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/login", func(w http.ResponseWriter, req *http.Request) {
		state, nonce, pkce := oauth2.GenerateVerifier(), oauth2.GenerateVerifier(), oauth2.GenerateVerifier()
		r.mu.Lock()
		r.pending[state] = [2]string{nonce, pkce}
		r.mu.Unlock()
		http.Redirect(w, req, r.cfg.AuthCodeURL(state, oidc.Nonce(nonce), oauth2.S256ChallengeOption(pkce)), http.StatusFound)
	})
	mux.HandleFunc("/callback", func(w http.ResponseWriter, req *http.Request) {
		q := req.URL.Query()
		r.mu.Lock()
		p, ok := r.pending[q.Get("state")]
		delete(r.pending, q.Get("state"))
		r.mu.Unlock()
		if !ok {
			http.Error(w, "unknown state", http.StatusBadRequest)
			return
		}
		verifier := p[1]
		if r.badVerifier {
			verifier = oauth2.GenerateVerifier()
		}
		tok, err := r.cfg.Exchange(req.Context(), q.Get("code"), oauth2.VerifierOption(verifier))
		if err != nil {
			http.Error(w, "exchange: "+err.Error(), http.StatusBadGateway)
			return
		}
		idt, err := r.verifier.Verify(req.Context(), testdex.IDToken(tok))
		if err != nil {
			http.Error(w, "id token: "+err.Error(), http.StatusUnauthorized)
			return
		}
		if idt.Nonce != p[0] {
			http.Error(w, "nonce mismatch", http.StatusUnauthorized)
			return
		}
		var claims map[string]any
		idt.Claims(&claims)
		claims["has_refresh_token"] = tok.RefreshToken != ""
		claims["refresh_token"] = tok.RefreshToken
		// The access token's payload, unverified (TestPasswordGrantTokens
		// verifies one).
		if parts := strings.Split(tok.AccessToken, "."); len(parts) == 3 {
			b, _ := base64.RawURLEncoding.DecodeString(parts[1])
			var at map[string]any
			json.Unmarshal(b, &at)
			claims["access_token_claims"] = at
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(claims)
	})
	r.srv = httptest.NewServer(mux)
	t.Cleanup(r.srv.Close)
	return r
}

func (r *rp) callbackURL() string { return r.srv.URL + "/callback" }

// login runs the RP's flow through d.Login and returns the callback's status
// and body.
func (r *rp) login(t *testing.T, d *testdex.Dex, email, password string) (int, map[string]any, error) {
	t.Helper()
	jar, _ := cookiejar.New(nil)
	return r.loginWith(t, &http.Client{Jar: jar}, d, email, password)
}

func (r *rp) loginWith(t *testing.T, c *http.Client, d *testdex.Dex, email, password string) (int, map[string]any, error) {
	t.Helper()
	cb, err := d.Login(ctx(t), c, r.srv.URL+"/login", email, password)
	if err != nil {
		return 0, nil, err
	}
	u, _ := url.Parse(cb)
	if u.Host != strings.TrimPrefix(r.srv.URL, "http://") || u.Path != "/callback" || u.Query().Get("code") == "" {
		t.Fatalf("Login returned %s, want the RP's callback with a code", cb)
	}
	resp, err := c.Get(cb)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if resp.StatusCode == http.StatusOK {
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
	} else {
		b := make([]byte, 2048)
		n, _ := resp.Body.Read(b)
		body = map[string]any{"error": string(b[:n])}
	}
	return resp.StatusCode, body, nil
}

func TestLoginCodeFlowPKCE(t *testing.T) {
	r := newRP(t)
	d := testdex.Start(t, testdex.Options{RedirectURIs: []string{r.callbackURL()}})
	r.cfg = d.OAuth2Config(d.ClientID(), d.ClientSecret(), r.callbackURL())
	r.verifier = verifier(t, d, d.ClientID())

	email, password := d.User()
	status, claims, err := r.login(t, d, email, password)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusOK {
		t.Fatalf("callback: %d %v", status, claims)
	}
	if claims["sub"] != d.Subject() || claims["email"] != email || claims["has_refresh_token"] != true {
		t.Errorf("claims %v", claims)
	}
	// A code-flow access token also carries the authorization request's
	// nonce (and, as every dex access token, an at_hash); no c_hash.
	at, _ := claims["access_token_claims"].(map[string]any)
	if at == nil || at["nonce"] == nil || at["nonce"] != claims["nonce"] || at["at_hash"] == nil ||
		at["sub"] != d.Subject() || at["aud"] != d.ClientID() {
		t.Errorf("access token claims %v (ID token nonce %v)", at, claims["nonce"])
	}
	if _, ok := at["c_hash"]; ok {
		t.Errorf("access token has c_hash: %v", at)
	}

	if claims["c_hash"] == nil || claims["at_hash"] == nil {
		t.Errorf("code-flow ID token without c_hash or at_hash: %v", claims)
	}
	for _, k := range []string{"auth_time", "sid", "amr", "acr", "azp", "nbf", "jti"} {
		if _, ok := claims[k]; ok {
			t.Errorf("ID token has %s (doc.go says dex sets none): %v", k, claims)
		}
	}

	t.Run("refreshed ID token repeats the nonce", func(t *testing.T) {
		tok, err := d.Refresh(ctx(t), claims["refresh_token"].(string))
		if err != nil {
			t.Fatal(err)
		}
		idt, err := r.verifier.Verify(ctx(t), testdex.IDToken(tok))
		if err != nil {
			t.Fatal(err)
		}
		if idt.Nonce == "" || idt.Nonce != claims["nonce"] {
			t.Errorf("refreshed ID token nonce %q, login's %v", idt.Nonce, claims["nonce"])
		}
		if _, atc := jwtParts(t, tok.AccessToken); atc["nonce"] != claims["nonce"] || atc["at_hash"] == nil {
			t.Errorf("refreshed access token claims %v, login's nonce %v", atc, claims["nonce"])
		}
	})
	t.Run("no SSO session, prompt=none ignored", func(t *testing.T) {
		// The same cookie jar as a finished login, and prompt=none: dex still
		// shows its password form (it keeps no login session and does not
		// answer login_required).
		jar, _ := cookiejar.New(nil)
		for i := range 2 {
			rec := &recorder{next: http.DefaultTransport}
			c := &http.Client{Jar: jar, Transport: rec}
			start := r.cfg.AuthCodeURL(fmt.Sprintf("state-%d-0123456789", i), oauth2.S256ChallengeOption(oauth2.GenerateVerifier()))
			if i == 1 {
				start += "&prompt=none"
			}
			cb, err := d.Login(ctx(t), c, start, email, password)
			if err != nil || !strings.Contains(cb, "code=") {
				t.Fatalf("login %d: %v %s", i, err, cb)
			}
			lu, _ := url.Parse(d.URL(testdex.PathPasswordLogin))
			if !slices.Contains(rec.requests(), "POST "+lu.Host+lu.Path) {
				t.Fatalf("login %d without the password form: %q", i, rec.requests())
			}
		}
	})
	t.Run("second user", func(t *testing.T) {
		status, claims, err := r.login(t, d, testdex.DefaultEmail2, testdex.DefaultPassword2)
		if err != nil || status != http.StatusOK || claims["sub"] != testdex.Subject(testdex.DefaultUserID2) {
			t.Fatalf("%v %d %v", err, status, claims)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		_, _, err := r.login(t, d, email, "wrong")
		if !errors.Is(err, testdex.ErrInvalidCredentials) {
			t.Fatalf("err %v, want ErrInvalidCredentials", err)
		}
	})
	t.Run("unknown user", func(t *testing.T) {
		_, _, err := r.login(t, d, "nobody@example.com", password)
		if !errors.Is(err, testdex.ErrInvalidCredentials) {
			t.Fatalf("err %v, want ErrInvalidCredentials", err)
		}
	})
	t.Run("PKCE is checked", func(t *testing.T) {
		r.badVerifier = true
		defer func() { r.badVerifier = false }()
		status, body, err := r.login(t, d, email, password)
		if err != nil {
			t.Fatal(err)
		}
		if status != http.StatusBadGateway || !strings.Contains(fmt.Sprint(body["error"]), "invalid_grant") {
			t.Fatalf("exchange with a wrong code_verifier: %d %v, want invalid_grant", status, body)
		}
	})
	t.Run("unregistered redirect URI", func(t *testing.T) {
		cfg := *r.cfg
		cfg.RedirectURL = r.srv.URL + "/other"
		_, err := d.Login(ctx(t), nil, cfg.AuthCodeURL("state-1234567890"), email, password)
		if err == nil || !strings.Contains(err.Error(), "status 400") {
			t.Fatalf("err %v, want dex's 400 error page", err)
		}
		t.Log(err)
	})
}

func TestLoginApprovalScreen(t *testing.T) {
	r := newRP(t)
	d := testdex.Start(t, testdex.Options{RedirectURIs: []string{r.callbackURL()}, ShowApprovalScreen: true})
	r.cfg = d.OAuth2Config(d.ClientID(), d.ClientSecret(), r.callbackURL())
	r.verifier = verifier(t, d, d.ClientID())
	email, password := d.User()
	rec := &recorder{next: http.DefaultTransport}
	jar, _ := cookiejar.New(nil)
	status, claims, err := r.loginWith(t, &http.Client{Jar: jar, Transport: rec}, d, email, password)
	if err != nil || status != http.StatusOK || claims["sub"] != d.Subject() {
		t.Fatalf("%v %d %v", err, status, claims)
	}
	au, _ := url.Parse(d.URL(testdex.PathApproval))
	approval := "POST " + au.Host + au.Path
	if !slices.Contains(rec.requests(), approval) {
		t.Errorf("no %s among the login's requests %q", approval, rec.requests())
	}
}

// recorder records "METHOD host:port/path" of every request.
type recorder struct {
	next http.RoundTripper
	mu   sync.Mutex
	reqs []string
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	r.mu.Lock()
	r.reqs = append(r.reqs, req.Method+" "+req.URL.Host+req.URL.Path)
	r.mu.Unlock()
	return r.next.RoundTrip(req)
}

func (r *recorder) requests() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

// The public client takes any loopback redirect URI, so an RP started after
// dex can use it.
func TestLoginPublicClient(t *testing.T) {
	d := testdex.Start(t, testdex.Options{})
	r := newRP(t)
	r.cfg = d.OAuth2Config(d.PublicClient(), "", r.callbackURL())
	r.verifier = verifier(t, d, d.PublicClient())
	email, password := d.User()
	status, claims, err := r.login(t, d, email, password)
	if err != nil || status != http.StatusOK || claims["aud"] != d.PublicClient() {
		t.Fatalf("%v %d %v", err, status, claims)
	}

	// dex does not require PKCE, even from a public client.
	cb, err := d.Login(ctx(t), nil, r.cfg.AuthCodeURL("state-no-pkce-0123456789"), email, password)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(cb)
	tok, err := r.cfg.Exchange(ctx(t), u.Query().Get("code"))
	if err != nil || testdex.IDToken(tok) == "" {
		t.Fatalf("public client without PKCE: %v", err)
	}
}

func TestIssuerAtRootAndCustomUser(t *testing.T) {
	u := testdex.User{Email: "alice@example.org", Password: "pw-alice", Username: "Alice", UserID: "a1", Groups: []string{"g"}, EmailUnverified: true}
	d := testdex.Start(t, testdex.Options{IssuerPath: "/", Users: []testdex.User{u}, ClientID: "c1", ClientSecret: "s1"})
	if strings.Count(d.Issuer(), "/") != 2 {
		t.Fatalf("issuer %q has a path", d.Issuer())
	}
	if id, secret := d.WebClient(); id != "c1" || secret != "s1" {
		t.Fatalf("WebClient %q %q", id, secret)
	}
	tok, err := d.PasswordGrant(ctx(t), u.Email, u.Password)
	if err != nil {
		t.Fatal(err)
	}
	idt, err := verifier(t, d, "c1").Verify(ctx(t), testdex.IDToken(tok))
	if err != nil {
		t.Fatal(err)
	}
	var c struct {
		EmailVerified *bool    `json:"email_verified"`
		Name          string   `json:"name"`
		Groups        []string `json:"groups"`
	}
	idt.Claims(&c)
	if idt.Subject != testdex.Subject("a1") || c.EmailVerified == nil || *c.EmailVerified || c.Name != "Alice" || !slices.Equal(c.Groups, u.Groups) {
		t.Errorf("sub %q claims %+v", idt.Subject, c)
	}
	if _, err := d.PasswordGrant(ctx(t), testdex.DefaultEmail, testdex.DefaultPassword); err == nil {
		t.Error("default user exists although Users was given")
	}
}

func TestClose(t *testing.T) {
	d := testdex.Start(t, testdex.Options{})
	d.Close()
	if _, err := http.Get(d.URL(testdex.PathDiscovery)); err == nil {
		t.Fatal("dex still answers after Close")
	}
	d.Close() // twice is fine
}

func TestBinaryIsCached(t *testing.T) {
	p1 := testdex.Binary(t)
	start := time.Now()
	p2 := testdex.Binary(t)
	if p1 != p2 || time.Since(start) > time.Second {
		t.Fatalf("second Binary: %q (first %q) after %s", p2, p1, time.Since(start))
	}
	if !strings.Contains(p1, testdex.DexVersion) {
		t.Errorf("binary path %q does not name the dex version", p1)
	}
}

// tokenError posts form to dex's token endpoint (as the confidential client
// with secret, unless it is "") and returns the HTTP status and OAuth error
// code.
func tokenError(t *testing.T, d *testdex.Dex, secret string, form url.Values) (int, string) {
	t.Helper()
	req, _ := http.NewRequestWithContext(ctx(t), http.MethodPost, d.URL(testdex.PathToken), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	if secret != "" {
		req.SetBasicAuth(d.ClientID(), secret)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var e struct {
		Error string `json:"error"`
	}
	json.NewDecoder(resp.Body).Decode(&e)
	return resp.StatusCode, e.Error
}

// The OAuth error codes dex answers with (doc.go): a spent, unknown or
// expired refresh token is invalid_request, not invalid_grant.
func TestTokenErrorCodes(t *testing.T) {
	d := testdex.Start(t, testdex.Options{RefreshTokenAbsoluteLifetime: 2 * time.Second})
	for _, c := range []struct {
		name, secret string
		form         url.Values
		status       int
		code         string
	}{
		{"bogus code", d.ClientSecret(), url.Values{"grant_type": {"authorization_code"}, "code": {"bogus"}, "redirect_uri": {testdex.DefaultRedirectURI}}, 400, "invalid_grant"},
		{"bogus refresh token", d.ClientSecret(), url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"bogus"}}, 400, "invalid_request"},
		{"wrong secret", "wrong", url.Values{"grant_type": {"authorization_code"}, "code": {"bogus"}}, 401, "invalid_client"},
		{"unknown grant", d.ClientSecret(), url.Values{"grant_type": {"client_credentials"}}, 400, "unsupported_grant_type"},
	} {
		if status, code := tokenError(t, d, c.secret, c.form); status != c.status || code != c.code {
			t.Errorf("%s: %d %q, want %d %q", c.name, status, code, c.status, c.code)
		}
	}

	// RefreshTokenAbsoluteLifetime reaches dex: the refresh token expires.
	email, password := d.User()
	tok, err := d.PasswordGrant(ctx(t), email, password)
	if err != nil {
		t.Fatal(err)
	}
	next, err := d.Refresh(ctx(t), tok.RefreshToken)
	if err != nil {
		t.Fatalf("refresh within the lifetime: %v", err)
	}
	time.Sleep(2500 * time.Millisecond)
	// The rotated token counts from the login, not from its rotation.
	var re *oauth2.RetrieveError
	if _, err := d.Refresh(ctx(t), next.RefreshToken); !errors.As(err, &re) || re.ErrorCode != "invalid_request" || re.ErrorDescription != "Refresh token expired." {
		t.Fatalf("refresh after the absolute lifetime: %v, want invalid_request (Refresh token expired.)", err)
	}
}

// Introspection needs no client authentication and only checks signature
// and expiry: an ID token is "active" too, and an access token stays active
// after its refresh token was spent (doc.go).
func TestIntrospection(t *testing.T) {
	d := testdex.Start(t, testdex.Options{})
	email, password := d.User()
	tok, err := d.PasswordGrant(ctx(t), email, password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Refresh(ctx(t), tok.RefreshToken); err != nil {
		t.Fatal(err)
	}
	introspect := func(token string) map[string]any {
		t.Helper()
		resp, err := http.PostForm(d.URL(testdex.PathIntrospect), url.Values{"token": {token}}) // no client auth
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("introspection: %d %v", resp.StatusCode, err)
		}
		return m
	}
	at := introspect(tok.AccessToken)
	if at["active"] != true || at["sub"] != d.Subject() || at["client_id"] != d.ClientID() || at["token_use"] != "access_token" {
		t.Errorf("access token (its refresh token spent): %v", at)
	}
	if it := introspect(testdex.IDToken(tok)); it["active"] != true || it["token_use"] != "access_token" {
		t.Errorf("ID token: %v", it)
	}
	if g := introspect("garbage"); g["active"] != false {
		t.Errorf("garbage: %v", g)
	}
}

// The device flow is on: the device authorization endpoint hands out codes
// and the token endpoint says authorization_pending until the user acts.
// (caddyoidc is its own device authorization server and does not use the
// provider's; this only shows the grant is configured.)
func TestDeviceAuthorization(t *testing.T) {
	d := testdex.Start(t, testdex.Options{})
	cfg := d.OAuth2Config(d.PublicClient(), "", "")
	da, err := cfg.DeviceAuth(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if da.DeviceCode == "" || da.UserCode == "" || !strings.HasPrefix(da.VerificationURI, d.URL(testdex.PathDevice)) {
		t.Fatalf("device authorization %+v", da)
	}
	status, code := tokenError(t, d, "", url.Values{
		"grant_type": {testdex.GrantDeviceCode}, "device_code": {da.DeviceCode}, "client_id": {d.PublicClient()},
	})
	if status != http.StatusUnauthorized && status != http.StatusBadRequest || code != "authorization_pending" {
		t.Fatalf("polling: %d %q, want authorization_pending", status, code)
	}
}
