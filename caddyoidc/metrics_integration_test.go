package caddyoidc_test

import (
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// metricValue reads one sample from a Prometheus text exposition.
func metricValue(t *testing.T, text, name string) float64 {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(name) + ` ([0-9.e+-]+)$`)
	m := re.FindStringSubmatch(text)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestMetricsScraped drives logins, refreshes, bearer failures and an AZAT
// mint, then scrapes Caddy's metrics handler.
func TestMetricsScraped(t *testing.T) {
	// A 6 s token refreshed within 3 s of its expiry: the requests right
	// after login never refresh, even on a loaded machine; the one 3.5 s
	// after the login does, once.
	op := startOP(t, testop.Options{AccessTokenLifetime: 6 * time.Second})
	up := newUpstream(t)
	id, secret := op.WebClient()
	pa, pm := freePort(t), freePort(t)
	site, metricsURL := "http://127.0.0.1:"+itoa(pa), "http://127.0.0.1:"+itoa(pm)+"/metrics"
	cf := "{\n\tadmin off\n\tpersist_config off\n\tauto_https off\n\tstorage file_system " + t.TempDir() + "\n}\n" +
		site + " {\n\toidc {\n\t\tissuer " + op.Issuer + "\n\t\tclient_id " + id + "\n\t\tclient_secret " + secret +
		"\n\t\tscopes openid profile email offline_access\n\t\trefresh_before 3s\n\t\tazat\n\t}\n\treverse_proxy " +
		strings.TrimPrefix(up.URL, "http://") + "\n}\n" +
		"http://127.0.0.1:" + itoa(pm) + " {\n\tmetrics\n}\n"
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(cf), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = caddy.Stop() })
	scrape := func() string { return body(t, get(t, browser(), metricsURL)) }
	before := scrape()

	c := browser()
	login(t, c, op, site, "/")
	loggedIn := time.Now()
	mintAZAT(t, c, site)
	get(t, browser(), site+"/api", "Authorization", "Bearer garbage")
	get(t, browser(), site+"/auth/callback?state=0123456789abcdefghij&code=x", navigate...)
	time.Sleep(time.Until(loggedIn.Add(3500 * time.Millisecond)))
	get(t, c, site+"/api")

	after := scrape()
	delta := func(name string) float64 { return metricValue(t, after, name) - metricValue(t, before, name) }
	checks := map[string]float64{
		`caddy_oidc_logins_total{outcome="started",provider=""}`:                      1,
		`caddy_oidc_callbacks_total{outcome="success",provider=""}`:                   1,
		`caddy_oidc_callbacks_total{outcome="rejected",provider=""}`:                  1,
		`caddy_oidc_azat_mints_total{outcome="success",provider=""}`:                  1,
		`caddy_oidc_verifications_total{kind="bearer",outcome="invalid",provider=""}`: 1,
		`caddy_oidc_refreshes_total{outcome="success",provider=""}`:                   1,
		`caddy_oidc_refresh_duration_seconds_count`:                                   1,
		`caddy_oidc_verifications_total{kind="session",outcome="ok",provider=""}`:     2,
		`caddy_oidc_verifications_total{kind="anonymous",outcome="none",provider=""}`: 1,
	}
	for name, want := range checks {
		if got := delta(name); got != want {
			t.Errorf("%s: +%v, want +%v", name, got, want)
		}
	}
	if t.Failed() {
		t.Logf("metrics:\n%s", grepLines(after, "caddy_oidc_"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
