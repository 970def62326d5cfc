package caddyoidc

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// TestNamespaceID: every part of (site, issuer, client) separates
// namespaces; an explicit name replaces the site, never the provider or the
// client, and cannot collide with a site of the same spelling.
func TestNamespaceID(t *testing.T) {
	base := namespaceID("https://a.example", "https://idp", "web", "")
	tests := []struct {
		name                           string
		site, issuer, client, explicit string
		same                           bool
	}{
		{"same inputs", "https://a.example", "https://idp", "web", "", true},
		{"other site", "https://b.example", "https://idp", "web", "", false},
		{"other port", "https://a.example:8443", "https://idp", "web", "", false},
		{"other issuer", "https://a.example", "https://idp2", "web", "", false},
		{"other client", "https://a.example", "https://idp", "web2", "", false},
		{"name spelled like the site", "", "https://idp", "web", "https://a.example", false},
		{"no separator ambiguity", "https://a.example\x00https://idp", "", "web", "", false},
	}
	for _, tt := range tests {
		if got := namespaceID(tt.site, tt.issuer, tt.client, tt.explicit); (got == base) != tt.same {
			t.Errorf("%s: same namespace %v, want %v", tt.name, got == base, tt.same)
		}
	}
	shared := namespaceID("https://a.example", "https://idp", "web", "files")
	for _, tt := range []struct {
		name                           string
		site, issuer, client, explicit string
		same                           bool
	}{
		{"named, other site", "https://b.example", "https://idp", "web", "files", true},
		{"named, other client", "https://a.example", "https://idp", "web2", "files", false},
		{"named, other issuer", "https://a.example", "https://idp2", "web", "files", false},
	} {
		if got := namespaceID(tt.site, tt.issuer, tt.client, tt.explicit); (got == shared) != tt.same {
			t.Errorf("%s: same namespace %v, want %v", tt.name, got == shared, tt.same)
		}
	}
}

func TestSiteOrigin(t *testing.T) {
	for _, tt := range []struct{ addr, want string }{
		{"files.example.com", "https://files.example.com"},
		{"https://files.example.com", "https://files.example.com"},
		{"https://files.example.com:443", "https://files.example.com"},
		{"files.example.com:8443", "https://files.example.com:8443"},
		{"http://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"127.0.0.1:80", "http://127.0.0.1"},
		{"http://[::1]:8080", "http://[::1]:8080"},
		{":8080", ""},
		{"*.example.com", ""},
		{"{$SITE}", ""},
		{"", ""},
	} {
		if got := siteOrigin(tt.addr); got != tt.want {
			t.Errorf("siteOrigin(%q) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

// TestCaddyfileSiteAddress: the Caddyfile fills `site` from the site block
// (read by reflection from Caddy's helper: this fails if a Caddy upgrade
// renames the field), unless `site` is given.
func TestCaddyfileSiteAddress(t *testing.T) {
	for _, tt := range []struct{ cf, want string }{
		{"files.example.com, other.example.com {\n\toidc {\n\t\tissuer https://idp\n\t\tclient_id c\n\t}\n}\n", "files.example.com"},
		{"http://127.0.0.1:8080 {\n\toidc {\n\t\tissuer https://idp\n\t\tclient_id c\n\t}\n}\n", "http://127.0.0.1:8080"},
		{"a.example {\n\toidc {\n\t\tissuer https://idp\n\t\tclient_id c\n\t\tsite https://b.example\n\t}\n}\n", "https://b.example"},
	} {
		out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(tt.cf), nil)
		if err != nil {
			t.Fatal(err)
		}
		var site string
		var walk func(any)
		walk = func(v any) {
			switch v := v.(type) {
			case map[string]any:
				if v["handler"] == "oidc" {
					site, _ = v["site"].(string)
				}
				for _, x := range v {
					walk(x)
				}
			case []any:
				for _, x := range v {
					walk(x)
				}
			}
		}
		var cfg any
		_ = json.Unmarshal(out, &cfg)
		walk(cfg)
		if site != tt.want {
			t.Errorf("site = %q, want %q\n%s", site, tt.want, out)
		}
	}
}

// TestUpgradeFailsClosed: storage written by a version without namespaces
// (a cookie secret and a session at the old keys) is not used, and a
// warning says so once; the handler's own data starts empty.
func TestUpgradeFailsClosed(t *testing.T) {
	ctx := context.Background()
	raw := &certmagic.FileStorage{Path: t.TempDir()}
	_ = raw.Store(ctx, cookieSecretKey, []byte(strings.Repeat("o", 32)))
	_ = raw.Store(ctx, "caddy-oidc/sessions/abc", []byte("old"))
	core, logs := observer.New(zap.WarnLevel)
	o := &OIDC{Provider: Provider{Issuer: "http://127.0.0.1:1", ClientID: "web"}, Session: "store"}
	if err := o.provision(ctx, zap.New(core), raw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = o.Cleanup() })
	if n := logs.FilterMessageSnippet("earlier version").Len(); n != 1 {
		t.Fatalf("%d upgrade warnings, want 1: %v", n, logs.All())
	}
	if o.storage.Exists(ctx, "caddy-oidc/sessions/abc") {
		t.Fatal("the old session is visible in the namespace")
	}
	if b, _ := o.storage.Load(ctx, cookieSecretKey); string(b) == strings.Repeat("o", 32) {
		t.Fatal("the old cookie secret is used")
	}
}
