package testop_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"golang.org/x/oauth2"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// callbackURL is where the (non-existent) RP would receive the code; the
// login helper never follows it, so nothing needs to listen there.
const callbackURL = "http://127.0.0.1:45678/auth/callback"

func start(t *testing.T, opts testop.Options) *testop.OP {
	t.Helper()
	o, err := testop.Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { o.Close() })
	return o
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
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

// verifyJWT checks the signature against the OP's JWKS and returns the kid
// and claims.
func verifyJWT(t *testing.T, o *testop.OP, token string) (string, map[string]any) {
	t.Helper()
	sig, err := jose.ParseSigned(token, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
	if err != nil {
		t.Fatalf("parse %q: %v", token, err)
	}
	kid := sig.Signatures[0].Header.KeyID
	var jwks jose.JSONWebKeySet
	getJSON(t, o.URL(testop.PathKeys), &jwks)
	keys := jwks.Key(kid)
	if len(keys) == 0 {
		t.Fatalf("kid %q not in JWKS", kid)
	}
	payload, err := sig.Verify(keys[0].Key)
	if err != nil {
		t.Fatal(err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		t.Fatal(err)
	}
	return kid, claims
}

func audience(claims map[string]any) []string {
	switch a := claims["aud"].(type) {
	case string:
		return []string{a}
	case []any:
		var out []string
		for _, v := range a {
			out = append(out, v.(string))
		}
		return out
	}
	return nil
}

func strs(v any) []string {
	var out []string
	for _, x := range v.([]any) {
		out = append(out, x.(string))
	}
	return out
}

// codeFlow runs authorization code + PKCE for the given client and returns
// the token.
func codeFlow(t *testing.T, o *testop.OP, cfg *oauth2.Config) *oauth2.Token {
	t.Helper()
	verifier := oauth2.GenerateVerifier()
	authURL := cfg.AuthCodeURL("state-123", oauth2.S256ChallengeOption(verifier),
		oauth2.SetAuthURLParam("nonce", "nonce-456"))
	cb, err := o.LoginAndGetCallback(ctx(t), authURL)
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cb)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cb, cfg.RedirectURL+"?") {
		t.Fatalf("callback %q does not go to %q", cb, cfg.RedirectURL)
	}
	if got := u.Query().Get("state"); got != "state-123" {
		t.Fatalf("state = %q", got)
	}
	code := u.Query().Get("code")
	if code == "" {
		t.Fatalf("no code in %q", cb)
	}
	tok, err := cfg.Exchange(ctx(t), code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func webConfig(o *testop.OP, scopes ...string) *oauth2.Config {
	id, secret := o.WebClient()
	return o.OAuth2Config(id, secret, callbackURL, scopes...)
}

func TestDiscovery(t *testing.T) {
	o := start(t, testop.Options{})
	if !strings.HasPrefix(o.Issuer, "http://127.0.0.1:") || strings.HasSuffix(o.Issuer, "/") {
		t.Fatalf("issuer %q", o.Issuer)
	}
	var d map[string]any
	if code := getJSON(t, o.URL(testop.PathDiscovery), &d); code != 200 {
		t.Fatalf("discovery status %d", code)
	}
	want := map[string]string{
		"issuer":                 o.Issuer,
		"authorization_endpoint": o.URL(testop.PathAuthorize),
		"token_endpoint":         o.URL(testop.PathToken),
		"userinfo_endpoint":      o.URL(testop.PathUserinfo),
		"introspection_endpoint": o.URL(testop.PathIntrospect),
		"revocation_endpoint":    o.URL(testop.PathRevoke),
		"end_session_endpoint":   o.URL(testop.PathEndSession),
		"jwks_uri":               o.URL(testop.PathKeys),
	}
	for k, v := range want {
		if d[k] != v {
			t.Errorf("%s = %v, want %v", k, d[k], v)
		}
	}
	if !slices.Contains(strs(d["code_challenge_methods_supported"]), "S256") {
		t.Errorf("S256 not supported: %v", d["code_challenge_methods_supported"])
	}
	var jwks jose.JSONWebKeySet
	getJSON(t, o.URL(testop.PathKeys), &jwks)
	if len(jwks.Keys) != 1 || jwks.Keys[0].KeyID != o.SigningKeyID() {
		t.Fatalf("jwks %+v, signing kid %s", jwks, o.SigningKeyID())
	}
}

func TestCodeFlowPKCE(t *testing.T) {
	o := start(t, testop.Options{})
	cfg := webConfig(o)
	tok := codeFlow(t, o, cfg)
	if tok.RefreshToken == "" {
		t.Error("no refresh token despite offline_access")
	}
	if got := o.TokenCalls("authorization_code"); got != 1 {
		t.Errorf("TokenCalls(authorization_code) = %d", got)
	}

	rawID, _ := tok.Extra("id_token").(string)
	kid, id := verifyJWT(t, o, rawID)
	if kid != o.SigningKeyID() {
		t.Errorf("id_token kid %s, signing key %s", kid, o.SigningKeyID())
	}
	if id["iss"] != o.Issuer || id["sub"] != testop.UserID || id["nonce"] != "nonce-456" ||
		!slices.Equal(audience(id), []string{testop.WebClientID}) {
		t.Errorf("id_token claims %v", id)
	}
	if id["email"] != "test-user@zitadel.ch" || id["preferred_username"] != testop.Username {
		t.Errorf("id_token lacks email/preferred_username: %v", id)
	}
	if g := strs(id["groups"]); !slices.Equal(g, []string{"admin", "users"}) {
		t.Errorf("id_token groups %v", g)
	}

	_, at := verifyJWT(t, o, tok.AccessToken)
	if !slices.Equal(audience(at), []string{testop.WebClientID}) || at["client_id"] != testop.WebClientID ||
		at["sub"] != testop.UserID || at["iss"] != o.Issuer {
		t.Errorf("access token claims %v", at)
	}
	if g := strs(at["groups"]); !slices.Equal(g, []string{"admin", "users"}) {
		t.Errorf("access token groups %v", g)
	}

	// userinfo with the access token
	req, _ := http.NewRequest(http.MethodGet, o.URL(testop.PathUserinfo), nil)
	tok.SetAuthHeader(req)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var ui map[string]any
	json.NewDecoder(resp.Body).Decode(&ui)
	resp.Body.Close()
	if resp.StatusCode != 200 || ui["sub"] != testop.UserID || ui["email"] != "test-user@zitadel.ch" || ui["groups"] == nil {
		t.Errorf("userinfo %d %v", resp.StatusCode, ui)
	}
}

func TestStrictIDTokenClaims(t *testing.T) {
	o := start(t, testop.Options{StrictIDTokenClaims: true})
	tok := codeFlow(t, o, webConfig(o))
	_, id := verifyJWT(t, o, tok.Extra("id_token").(string))
	if _, ok := id["email"]; ok {
		t.Errorf("zitadel default should leave email out of the id_token: %v", id)
	}
	if id["groups"] == nil {
		t.Errorf("groups missing: %v", id)
	}
}

func TestPublicClientPKCE(t *testing.T) {
	o := start(t, testop.Options{})
	cfg := o.OAuth2Config(o.PublicClient(), "", "http://localhost:39999/cb")
	tok := codeFlow(t, o, cfg)
	if tok.AccessToken == "" {
		t.Fatal("no access token")
	}

	// without PKCE the public client is refused at the token endpoint
	cb, err := o.LoginAndGetCallback(ctx(t), cfg.AuthCodeURL("s"))
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(cb)
	if _, err := cfg.Exchange(ctx(t), u.Query().Get("code")); err == nil {
		t.Fatal("public client exchange without PKCE succeeded")
	}
}

func TestLoginErrors(t *testing.T) {
	o := start(t, testop.Options{})
	cfg := webConfig(o)
	if _, err := o.Login(ctx(t), nil, cfg.AuthCodeURL("s"), testop.Username, "wrong"); err == nil ||
		!strings.Contains(err.Error(), "username or password wrong") {
		t.Errorf("wrong password: %v", err)
	}
	bad := *cfg
	bad.RedirectURL = "http://evil.example.com/cb"
	if _, err := o.LoginAndGetCallback(ctx(t), bad.AuthCodeURL("s")); err == nil {
		t.Error("foreign redirect_uri accepted")
	}
	unknown := *cfg
	unknown.ClientID = "nope"
	if _, err := o.LoginAndGetCallback(ctx(t), unknown.AuthCodeURL("s")); err == nil {
		t.Error("unknown client accepted")
	}
	// second user
	cb, err := o.Login(ctx(t), nil, cfg.AuthCodeURL("s"), testop.Username2, testop.Password2)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(cb)
	tok, err := cfg.Exchange(ctx(t), u.Query().Get("code"))
	if err != nil {
		t.Fatal(err)
	}
	_, id := verifyJWT(t, o, tok.Extra("id_token").(string))
	if id["sub"] != testop.UserID2 || !slices.Equal(strs(id["groups"]), []string{"users"}) {
		t.Errorf("user2 id_token %v", id)
	}
}

// TestLoginThroughRP starts at an RP URL that redirects to the OP, sharing
// the caller's cookie jar.
func TestLoginThroughRP(t *testing.T) {
	o := start(t, testop.Options{})
	var cfg *oauth2.Config
	rp := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.SetCookie(w, &http.Cookie{Name: "rp_state", Value: "x", Path: "/"})
		http.Redirect(w, r, cfg.AuthCodeURL("via-rp"), http.StatusFound)
	}))
	defer rp.Close()
	cfg = webConfig(o)
	cfg.RedirectURL = rp.URL + "/auth/callback"

	jar, _ := cookiejar.New(nil)
	client := &http.Client{Jar: jar}
	cb, err := o.Login(ctx(t), client, rp.URL+"/login", testop.Username, testop.Password)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(cb, rp.URL+"/auth/callback?") || !strings.Contains(cb, "state=via-rp") {
		t.Fatalf("callback %q", cb)
	}
	rpURL, _ := url.Parse(rp.URL)
	if len(jar.Cookies(rpURL)) != 1 {
		t.Fatal("RP cookie not kept in the caller's jar")
	}
}

func TestRefresh(t *testing.T) {
	o := start(t, testop.Options{})
	cfg := webConfig(o)
	tok := codeFlow(t, o, cfg)

	expired := *tok
	expired.Expiry = time.Now().Add(-time.Minute)
	newTok, err := cfg.TokenSource(ctx(t), &expired).Token()
	if err != nil {
		t.Fatal(err)
	}
	if got := o.TokenCalls("refresh_token"); got != 1 {
		t.Fatalf("TokenCalls(refresh_token) = %d", got)
	}
	if newTok.AccessToken == tok.AccessToken {
		t.Error("access token not renewed")
	}
	if newTok.RefreshToken == "" || newTok.RefreshToken == tok.RefreshToken {
		t.Errorf("refresh token not rotated: %q", newTok.RefreshToken)
	}
	if _, ok := newTok.Extra("id_token").(string); !ok {
		t.Error("no id_token on refresh")
	}
	// the rotated-out refresh token is dead
	if _, err := cfg.TokenSource(ctx(t), &expired).Token(); err == nil {
		t.Error("old refresh token still accepted")
	} else {
		var re *oauth2.RetrieveError
		if !errors.As(err, &re) || re.ErrorCode != "invalid_grant" {
			t.Errorf("old refresh token: %v", err)
		}
	}
	if got := o.TokenCalls("refresh_token"); got != 2 {
		t.Fatalf("TokenCalls(refresh_token) = %d", got)
	}

	// bulk revocation
	o.RevokeAllRefreshTokens()
	newTok.Expiry = time.Now().Add(-time.Minute)
	if _, err := cfg.TokenSource(ctx(t), newTok).Token(); err == nil {
		t.Error("refresh after RevokeAllRefreshTokens succeeded")
	}
}

func TestRefreshWithoutRotation(t *testing.T) {
	o := start(t, testop.Options{DisableRefreshTokenRotation: true})
	cfg := webConfig(o)
	tok := codeFlow(t, o, cfg)
	for i := range 3 {
		expired := *tok
		expired.Expiry = time.Now().Add(-time.Minute)
		nt, err := cfg.TokenSource(ctx(t), &expired).Token()
		if err != nil {
			t.Fatalf("refresh %d: %v", i, err)
		}
		if nt.RefreshToken != tok.RefreshToken {
			t.Fatalf("refresh token changed: %q -> %q", tok.RefreshToken, nt.RefreshToken)
		}
	}
	if got := o.TokenCalls("refresh_token"); got != 3 {
		t.Fatalf("TokenCalls(refresh_token) = %d", got)
	}
}

func TestRevokeRefreshToken(t *testing.T) {
	o := start(t, testop.Options{})
	cfg := webConfig(o)
	tok := codeFlow(t, o, cfg)
	form := url.Values{"token": {tok.RefreshToken}, "token_type_hint": {"refresh_token"}}
	req, _ := http.NewRequest(http.MethodPost, o.URL(testop.PathRevoke), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(o.WebClient())
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("revoke status %d", resp.StatusCode)
	}
	expired := *tok
	expired.Expiry = time.Now().Add(-time.Minute)
	if _, err := cfg.TokenSource(ctx(t), &expired).Token(); err == nil {
		t.Error("revoked refresh token accepted")
	}
}

func introspect(t *testing.T, o *testop.OP, clientID, secret, token string) map[string]any {
	t.Helper()
	form := url.Values{"token": {token}}
	req, _ := http.NewRequest(http.MethodPost, o.URL(testop.PathIntrospect), strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(clientID, secret)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("introspect status %d: %s", resp.StatusCode, b)
	}
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m
}

func userinfoStatus(t *testing.T, o *testop.OP, token string) int {
	req, _ := http.NewRequest(http.MethodGet, o.URL(testop.PathUserinfo), nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestShortLifetimeOpaque(t *testing.T) {
	o := start(t, testop.Options{AccessTokenLifetime: 2 * time.Second, AccessTokenType: testop.AccessTokenOpaque})
	tok := codeFlow(t, o, webConfig(o))
	if strings.Count(tok.AccessToken, ".") == 2 {
		t.Fatalf("access token looks like a JWT: %s", tok.AccessToken)
	}
	if d := time.Until(tok.Expiry); d <= 0 || d > 3*time.Second {
		t.Fatalf("expiry in %v", d)
	}
	in := introspect(t, o, testop.WebClientID, testop.WebClientSecret, tok.AccessToken)
	if in["active"] != true || in["sub"] != testop.UserID || in["client_id"] != testop.WebClientID ||
		in["groups"] == nil || in["iss"] != o.Issuer {
		t.Fatalf("introspection %v", in)
	}
	// another client is not in aud: inactive
	if in := introspect(t, o, testop.OtherClientID, testop.OtherClientSecret, tok.AccessToken); in["active"] != false {
		t.Fatalf("introspection by other client %v", in)
	}
	if code := userinfoStatus(t, o, tok.AccessToken); code != 200 {
		t.Fatalf("userinfo %d", code)
	}
	time.Sleep(time.Until(tok.Expiry) + 1100*time.Millisecond)
	if in := introspect(t, o, testop.WebClientID, testop.WebClientSecret, tok.AccessToken); in["active"] != false {
		t.Fatalf("expired token introspected as %v", in)
	}
	if code := userinfoStatus(t, o, tok.AccessToken); code == 200 {
		t.Fatal("userinfo accepted expired token")
	}
}

func TestShortLifetimeJWT(t *testing.T) {
	o := start(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	tok := codeFlow(t, o, webConfig(o))
	_, at := verifyJWT(t, o, tok.AccessToken)
	exp, iat := at["exp"].(float64), at["iat"].(float64)
	if life := exp - iat; life < 2 || life > 3 {
		t.Fatalf("exp-iat = %v", life)
	}
	if code := userinfoStatus(t, o, tok.AccessToken); code != 200 {
		t.Fatalf("userinfo %d", code)
	}
	time.Sleep(time.Until(time.Unix(int64(exp), 0)) + 1100*time.Millisecond)
	if code := userinfoStatus(t, o, tok.AccessToken); code == 200 {
		t.Fatal("userinfo accepted expired JWT")
	}
}

func TestLongLifetimeOpaque(t *testing.T) {
	// Longer than the storage's hard-coded 5 minutes: only checks that the
	// token works and introspection reports our exp.
	o := start(t, testop.Options{AccessTokenLifetime: time.Hour, AccessTokenType: testop.AccessTokenOpaque})
	tok := codeFlow(t, o, webConfig(o))
	in := introspect(t, o, testop.WebClientID, testop.WebClientSecret, tok.AccessToken)
	if in["active"] != true {
		t.Fatalf("%v", in)
	}
	if exp := time.Unix(int64(in["exp"].(float64)), 0); time.Until(exp) < 59*time.Minute {
		t.Fatalf("exp %v", exp)
	}
}

func TestKeyRotation(t *testing.T) {
	o := start(t, testop.Options{})
	cfg := webConfig(o)
	old := o.SigningKeyID()
	tok1 := codeFlow(t, o, cfg)

	if err := o.RotateSigningKey(); err != nil {
		t.Fatal(err)
	}
	cur := o.SigningKeyID()
	if cur == old {
		t.Fatal("kid unchanged")
	}
	var jwks jose.JSONWebKeySet
	getJSON(t, o.URL(testop.PathKeys), &jwks)
	if len(jwks.Key(cur)) != 1 || len(jwks.Key(old)) != 1 {
		t.Fatalf("after rotate JWKS has %v", o.PublishedKeyIDs())
	}
	tok2 := codeFlow(t, o, cfg)
	if kid, _ := verifyJWT(t, o, tok2.Extra("id_token").(string)); kid != cur {
		t.Fatalf("new id_token signed with %s, want %s", kid, cur)
	}
	if kid, _ := verifyJWT(t, o, tok1.AccessToken); kid != old {
		t.Fatalf("old token kid %s", kid)
	}

	if err := o.ReplaceSigningKey(); err != nil {
		t.Fatal(err)
	}
	ids := o.PublishedKeyIDs()
	if len(ids) != 1 || ids[0] != o.SigningKeyID() || ids[0] == cur {
		t.Fatalf("after replace: %v", ids)
	}
	jwks = jose.JSONWebKeySet{}
	getJSON(t, o.URL(testop.PathKeys), &jwks)
	if len(jwks.Keys) != 1 || jwks.Keys[0].KeyID != ids[0] {
		t.Fatalf("JWKS %v", jwks)
	}
}

func TestES256(t *testing.T) {
	o := start(t, testop.Options{SigningAlgorithm: "ES256"})
	tok := codeFlow(t, o, webConfig(o))
	sig, err := jose.ParseSigned(tok.Extra("id_token").(string), []jose.SignatureAlgorithm{jose.ES256})
	if err != nil {
		t.Fatal(err)
	}
	if sig.Signatures[0].Header.Algorithm != "ES256" {
		t.Fatal(sig.Signatures[0].Header.Algorithm)
	}
	verifyJWT(t, o, tok.AccessToken)
}

func TestClientCredentials(t *testing.T) {
	o := start(t, testop.Options{})
	tok, err := o.ClientCredentialsToken(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	_, at := verifyJWT(t, o, tok.AccessToken)
	if at["sub"] != testop.ServiceClientID || !slices.Equal(audience(at), []string{testop.ServiceClientID}) {
		t.Fatalf("claims %v", at)
	}
	if got := o.TokenCalls("client_credentials"); got != 1 {
		t.Fatalf("TokenCalls(client_credentials) = %d", got)
	}

	tok, err = o.ClientCredentialsToken(ctx(t), testop.AudienceScopePrefix+testop.WebClientID)
	if err != nil {
		t.Fatal(err)
	}
	_, at = verifyJWT(t, o, tok.AccessToken)
	if !slices.Equal(audience(at), []string{testop.ServiceClientID, testop.WebClientID}) {
		t.Fatalf("aud %v", at["aud"])
	}
	in := introspect(t, o, testop.WebClientID, testop.WebClientSecret, tok.AccessToken)
	if in["active"] != true || in["sub"] != testop.ServiceClientID {
		t.Fatalf("introspection %v", in)
	}
	// the web client cannot use client_credentials
	id, secret := o.WebClient()
	cfg := o.OAuth2Config(id, secret, "")
	if _, err := cfg.PasswordCredentialsToken(ctx(t), "a", "b"); err == nil {
		t.Error("password grant accepted")
	}
}

func TestOtherClientTokens(t *testing.T) {
	o := start(t, testop.Options{})
	id, secret := o.OtherClient()
	tok := codeFlow(t, o, o.OAuth2Config(id, secret, "http://localhost:1234/x/y"))
	_, at := verifyJWT(t, o, tok.AccessToken)
	if !slices.Equal(audience(at), []string{testop.OtherClientID}) {
		t.Fatalf("aud %v", at["aud"])
	}
}

func TestFaults(t *testing.T) {
	o := start(t, testop.Options{})
	o.SetDown(true)
	if code := getJSON(t, o.URL(testop.PathDiscovery), nil); code != http.StatusServiceUnavailable {
		t.Fatalf("down: %d", code)
	}
	o.SetDown(false)
	if code := getJSON(t, o.URL(testop.PathDiscovery), nil); code != 200 {
		t.Fatalf("up: %d", code)
	}

	o.SetDropConnections(true)
	if _, err := http.Get(o.URL(testop.PathKeys)); err == nil {
		t.Fatal("dropped connection gave a response")
	}
	o.SetDropConnections(false)

	o.FailTokenRequests(1, http.StatusInternalServerError)
	if _, err := o.ClientCredentialsToken(ctx(t)); err == nil {
		t.Fatal("injected failure not applied")
	}
	if _, err := o.ClientCredentialsToken(ctx(t)); err != nil {
		t.Fatalf("second request: %v", err)
	}

	o.SetTokenDelay(2 * time.Second)
	c, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := o.ClientCredentialsToken(c); err == nil {
		t.Fatal("delay not applied")
	}
	o.SetTokenDelay(0)
	if got := o.TokenCalls("client_credentials"); got != 3 {
		t.Fatalf("TokenCalls = %d", got)
	}
	if got := o.Requests(testop.PathDiscovery); got != 2 {
		t.Fatalf("Requests(discovery) = %d", got)
	}
}

func TestEndSession(t *testing.T) {
	o := start(t, testop.Options{})
	tok := codeFlow(t, o, webConfig(o))
	q := url.Values{
		"id_token_hint":            {tok.Extra("id_token").(string)},
		"post_logout_redirect_uri": {"http://127.0.0.1:45678/"},
		"state":                    {"bye"},
	}
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Get(o.URL(testop.PathEndSession) + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if loc := resp.Header.Get("Location"); resp.StatusCode != http.StatusFound || loc != "http://127.0.0.1:45678/?state=bye" {
		t.Fatalf("end_session %d %q", resp.StatusCode, loc)
	}
	// the session's tokens are gone
	if code := userinfoStatus(t, o, tok.AccessToken); code == 200 {
		t.Error("userinfo still works after end_session")
	}
}

func TestParallelOPs(t *testing.T) {
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			extra := fmt.Sprintf("extra-%d", i)
			o, err := testop.Start(testop.Options{Clients: []testop.Client{{ID: extra, Secret: "s"}}})
			if err != nil {
				errs <- err
				return
			}
			defer o.Close()
			cb, err := o.LoginAndGetCallback(context.Background(), o.OAuth2Config(extra, "s", callbackURL).AuthCodeURL("x"))
			if err != nil {
				errs <- err
				return
			}
			u, _ := url.Parse(cb)
			if _, err := o.OAuth2Config(extra, "s", callbackURL).Exchange(context.Background(), u.Query().Get("code")); err != nil {
				errs <- err
			}
			// other OPs' extra clients are unknown here
			other := fmt.Sprintf("extra-%d", (i+1)%4)
			if _, err := o.LoginAndGetCallback(context.Background(), o.OAuth2Config(other, "s", callbackURL).AuthCodeURL("x")); err == nil {
				errs <- fmt.Errorf("client %s leaked into OP %d", other, i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
