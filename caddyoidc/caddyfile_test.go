package caddyoidc

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	input := `oidc {
		issuer        https://idp.example.com
		client_id     {env.OIDC_CLIENT_ID}
		client_secret {env.OIDC_CLIENT_SECRET}
		scopes        openid profile email offline_access
		audience      my-api other-api
		routes        /oauth
		redirect_url  https://app.example.com/oauth/callback
		post_logout_redirect https://app.example.com/bye
		auth_param    access_type offline
		auth_param    prompt consent
		cookie_secret {file./run/secret}
		cookie_name   sess
		cookie_domain example.com
		cookie_host_prefix off
		cookie_secure off
		cookie_samesite strict
		session       store
		session_lifetime 12h
		refresh_before 1m
		session_cache 2s
		expose_tokens
		allow_anonymous
		pass_token    id
		roles_claim   https://hasura.io/jwt/claims x-hasura-allowed-roles
		claim_header  X-Hasura-User-Id sub
		require_role  admin editor
		require_role  staff
		require_claim email_verified true
		introspection https://idp.example.com/introspect
		idp_timeout   3s
		userinfo      off
		strip_cookies off
		verify_client_secret
		tokeninfo     https://oauth2.googleapis.com/tokeninfo
		azat {
			lifetime 72h
			signer   kms alias/azat region eu-west-1 endpoint http://127.0.0.1:4599
			jwks     /keys.json
			issuer   https://files.example.com
			audience files
			grant_secret {env.GRANT_SECRET}
			fallback access_token
			trust    https://other.example.com/.well-known/jwks.json
			verify_only
		}
	}`
	var o OIDC
	if err := o.UnmarshalCaddyfile(caddyfile.NewTestDispenser(input)); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(o)
	want := `{"issuer":"https://idp.example.com","client_id":"{env.OIDC_CLIENT_ID}","client_secret":"{env.OIDC_CLIENT_SECRET}",` +
		`"scopes":["openid","profile","email","offline_access"],"audience":["my-api","other-api"],"routes":"/oauth",` +
		`"redirect_url":"https://app.example.com/oauth/callback","post_logout_redirect_url":"https://app.example.com/bye",` +
		`"auth_params":{"access_type":"offline","prompt":"consent"},"cookie_secret":"{file./run/secret}","cookie_name":"sess",` +
		`"cookie_domain":"example.com","cookie_host_prefix":false,"cookie_secure":false,"cookie_samesite":"strict","session":"store",` +
		`"session_lifetime":43200000000000,"session_cache":2000000000,"refresh_before":60000000000,"expose_tokens":true,"allow_anonymous":true,` +
		`"pass_token":"id","roles_claim":["https://hasura.io/jwt/claims","x-hasura-allowed-roles"],` +
		`"claim_headers":{"X-Hasura-User-Id":"sub"},"require_roles":[["admin","editor"],["staff"]],` +
		`"require_claims":[{"path":"email_verified","values":["true"]}],"introspection":true,` +
		`"introspection_endpoint":"https://idp.example.com/introspect","idp_timeout":3000000000,"userinfo_fetch":false,"strip_cookies":false,"verify_client_secret":true,` +
		`"tokeninfo_endpoint":"https://oauth2.googleapis.com/tokeninfo","azat":{"lifetime":259200000000000,"signer":"kms",` +
		`"kms_key_id":"alias/azat","kms_region":"eu-west-1","kms_endpoint":"http://127.0.0.1:4599","jwks_path":"/keys.json",` +
		`"issuer":"https://files.example.com","audience":"files","grant_secret":"{env.GRANT_SECRET}","fallback":"access_token",` +
		`"trust":"https://other.example.com/.well-known/jwks.json","verify_only":true}}`
	// Compared as JSON values: the key order follows the struct's layout.
	if !jsonEqual(t, got, []byte(want)) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// jsonEqual tells whether a and b are the same JSON value.
func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var va, vb any
	if err := json.Unmarshal(a, &va); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &vb); err != nil {
		t.Fatal(err)
	}
	return reflect.DeepEqual(va, vb)
}

func TestUnmarshalCaddyfileErrors(t *testing.T) {
	tests := []string{
		`oidc extra-arg`,
		`oidc { unknown_thing 1 }`,
		`oidc { issuer }`,
		`oidc { issuer a b }`,
		`oidc { session_lifetime forever }`,
		`oidc { cookie_secure maybe }`,
		`oidc { auth_param only-name }`,
		`oidc { claim_header X-Only }`,
		`oidc { require_claim only-path }`,
		`oidc { require_role }`,
		`oidc { scopes }`,
		`oidc { azat extra }`,
		`oidc { azat { signer hsm } }`,
		`oidc { azat { signer kms } }`,
		`oidc { azat { signer kms alias/x zone a } }`,
		`oidc { azat { lifetime soon } }`,
		`oidc { azat { unknown 1 } }`,
		`oidc { azat { verify_only yes } }`,
		`oidc { provider }`,
		`oidc { provider a b }`,
		`oidc { provider a { cookie_name x } }`,
		`oidc { provider a { session store } }`,
		`oidc { provider a { azat } }`,
		`oidc { provider a { provider b } }`,
		`oidc { provider a { default_provider a } }`,
		`oidc { provider a { name b } }`,
		`oidc { label }`,
	}
	for _, in := range tests {
		in = strings.ReplaceAll(strings.ReplaceAll(in, "{ ", "{\n"), " }", "\n}")
		var o OIDC
		if err := o.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

func TestUnmarshalCaddyfileProviders(t *testing.T) {
	in := `oidc {
		provider corp {
			issuer https://kc.example.com/realms/corp
			client_id files
			client_secret {env.CORP}
			roles_claim realm_access roles
			claim_header X-Dept dept
		}
		provider ci {
			issuer https://token.actions.githubusercontent.com
			client_id files
			audience https://files.example.com
			bearer_only
			label GitHub Actions
		}
		default_provider corp
		session store
	}`
	var o OIDC
	if err := o.UnmarshalCaddyfile(caddyfile.NewTestDispenser(in)); err != nil {
		t.Fatal(err)
	}
	got, _ := json.Marshal(o)
	want := `{"providers":[{"name":"corp","issuer":"https://kc.example.com/realms/corp","client_id":"files","client_secret":"{env.CORP}",` +
		`"roles_claim":["realm_access","roles"],"claim_headers":{"X-Dept":"dept"}},` +
		`{"name":"ci","label":"GitHub Actions","issuer":"https://token.actions.githubusercontent.com","client_id":"files",` +
		`"audience":["https://files.example.com"],"bearer_only":true}],"default_provider":"corp","session":"store"}`
	if !jsonEqual(t, got, []byte(want)) {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

func TestValidateProviders(t *testing.T) {
	p := func(name, issuer string, mut ...func(*Provider)) *Provider {
		v := &Provider{Name: name, Issuer: issuer, ClientID: "c"}
		for _, m := range mut {
			m(v)
		}
		return v
	}
	intro := func(v *Provider) { v.Introspection = true }
	tests := []struct {
		name   string
		o      OIDC
		errSub string
	}{
		{"two providers", OIDC{Site: "a.example", Providers: []*Provider{p("a", "https://a"), p("b", "https://b")}}, ""},
		{"top-level provider options too", OIDC{Site: "a.example", Provider: Provider{Issuer: "https://x"}, Providers: []*Provider{p("a", "https://a")}}, "top level"},
		{"bad name", OIDC{Site: "a.example", Providers: []*Provider{p("Corp", "https://a")}}, "provider name"},
		{"no name", OIDC{Site: "a.example", Providers: []*Provider{p("", "https://a")}}, "provider name"},
		{"twice", OIDC{Site: "a.example", Providers: []*Provider{p("a", "https://a"), p("a", "https://b")}}, "twice"},
		{"two introspect", OIDC{Site: "a.example", Providers: []*Provider{p("a", "https://a", intro), p("b", "https://b", intro)}}, "opaque"},
		{"unknown default", OIDC{Site: "a.example", DefaultProvider: "z", Providers: []*Provider{p("a", "https://a")}}, "default_provider"},
		{"bearer_only default", OIDC{Site: "a.example", DefaultProvider: "a", Providers: []*Provider{p("a", "https://a", func(v *Provider) { v.BearerOnly = true })}}, "bearer_only"},
		{"no site", OIDC{Providers: []*Provider{p("a", "https://a")}}, "site is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.o.Validate()
			if tt.errSub == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.errSub) {
				t.Fatalf("err %v, want %q", err, tt.errSub)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	base := func() *OIDC {
		return &OIDC{Provider: Provider{Issuer: "https://idp.example.com", ClientID: "c", Scopes: []string{"openid"}}, Site: "app.example.com", Session: "cookie",
			PassToken: "access", CookieSameSite: "lax", SessionLifetime: 100, RefreshBefore: 1}
	}
	tests := []struct {
		name   string
		mutate func(*OIDC)
		errSub string
	}{
		{"ok", func(*OIDC) {}, ""},
		{"no issuer", func(o *OIDC) { o.Issuer = "" }, "issuer is required"},
		{"relative issuer", func(o *OIDC) { o.Issuer = "idp.example.com" }, "absolute"},
		{"no client", func(o *OIDC) { o.ClientID = "" }, "client_id is required"},
		{"no openid", func(o *OIDC) { o.Scopes = []string{"profile"} }, "openid"},
		{"bad session", func(o *OIDC) { o.Session = "redis" }, "session"},
		{"bad pass_token", func(o *OIDC) { o.PassToken = "refresh" }, "pass_token"},
		{"bad samesite", func(o *OIDC) { o.CookieSameSite = "sometimes" }, "samesite"},
		{"reserved param", func(o *OIDC) { o.AuthParams = map[string]string{"state": "x"} }, "state"},
		{"refresh_before too long", func(o *OIDC) { o.RefreshBefore = 1000 }, "refresh_before"},
		{"cookie name ok", func(o *OIDC) { o.CookieName = "app-session.v2_x" }, ""},
		{"cookie name with =", func(o *OIDC) { o.CookieName = "a=b" }, "cookie_name"},
		{"cookie name with ;", func(o *OIDC) { o.CookieName = "a;b" }, "cookie_name"},
		{"cookie name with space", func(o *OIDC) { o.CookieName = "my session" }, "cookie_name"},
		{"cookie name non-ASCII", func(o *OIDC) { o.CookieName = "sessión" }, "cookie_name"},
		{"cookie name too long", func(o *OIDC) { o.CookieName = strings.Repeat("c", 65) }, "cookie_name"},
		{"cookie name with the __Host- prefix", func(o *OIDC) { o.CookieName = "__Host-sess" }, "cookie_name"},
		{"cookie name with the __secure- prefix", func(o *OIDC) { o.CookieName = "__secure-sess" }, "cookie_name"},
		{"negative session_cache is fine", func(o *OIDC) { o.SessionCache = -1 }, ""},
		{"namespace ok", func(o *OIDC) { o.Namespace = "files.prod-1" }, ""},
		{"no site (JSON)", func(o *OIDC) { o.Site = "" }, "site is required"},
		{"no site, a namespace", func(o *OIDC) { o.Site, o.Namespace = "", "files" }, ""},
		{"namespace with /", func(o *OIDC) { o.Namespace = "../x" }, "namespace"},
		{"namespace too long", func(o *OIDC) { o.Namespace = strings.Repeat("n", 65) }, "namespace"},
	}
	for _, tt := range tests {
		o := base()
		tt.mutate(o)
		err := o.Validate()
		if tt.errSub == "" && err != nil || tt.errSub != "" && (err == nil || !strings.Contains(err.Error(), tt.errSub)) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.errSub)
		}
	}
}

// TestAdaptNeedsNoOrder checks that the directive is ordered by itself and
// that secrets given as placeholders stay placeholders in the JSON.
func TestAdaptNeedsNoOrder(t *testing.T) {
	cf := `example.com {
		oidc {
			issuer https://idp.example.com
			client_id app
			client_secret {env.SECRET}
		}
		reverse_proxy 127.0.0.1:3000
	}`
	adapter := caddyconfig.GetAdapter("caddyfile")
	out, warn, err := adapter.Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range warn {
		if !strings.Contains(w.Message, "not formatted") {
			t.Fatalf("warning: %v", w)
		}
	}
	s := string(out)
	if !strings.Contains(s, `"handler":"oidc"`) || !strings.Contains(s, `"client_secret":"{env.SECRET}"`) {
		t.Fatalf("unexpected JSON: %s", s)
	}
	if strings.Index(s, `"handler":"oidc"`) > strings.Index(s, `"handler":"reverse_proxy"`) {
		t.Fatal("oidc is not ordered before reverse_proxy")
	}
}

// TestExampleCaddyfilesAdapt adapts Caddyfile.example and every example's
// Caddyfile (.ci/run also runs `caddy adapt --validate` on them).
func TestExampleCaddyfilesAdapt(t *testing.T) {
	files, _ := filepath.Glob("../examples/*/Caddyfile")
	files = append(files, "../Caddyfile.example")
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(b, map[string]any{"filename": f})
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if !strings.Contains(string(out), `"handler":"oidc"`) {
			t.Errorf("%s: no oidc handler in %s", f, out)
		}
	}
}
