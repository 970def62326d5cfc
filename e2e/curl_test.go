package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// TestCurlManifestCommandLine runs the seed's command line shape with real
// curl through the real Caddy binary:
//
//	curl --fail '<manifest-url>' | curl --header "Authorization: Bearer <AZAT>" --config -
//
// The OP's access tokens live 2 s: the files are downloaded after the first
// one expired, and again after the next expiry, with exactly one refresh at
// the OP per expiry.
func TestCurlManifestCommandLine(t *testing.T) {
	if _, err := exec.LookPath("curl"); err != nil {
		t.Fatal("curl is required")
	}
	sitePort, upPort := freePort(t), freePort(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", sitePort)
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})
	up := goBuild(t, "./examples/curl-manifest/upstream")
	process(t, nil, up, "-addr", fmt.Sprintf("127.0.0.1:%d", upPort))
	waitHTTP(t, fmt.Sprintf("http://127.0.0.1:%d/", upPort))

	// The example's Caddyfile, pointed at this test's ports and OP.
	b, err := os.ReadFile(filepath.Join(repoRoot(), "examples/curl-manifest/Caddyfile"))
	must(t, err)
	cf := strings.NewReplacer(
		"http://127.0.0.1:8080", site,
		"127.0.0.1:8082", fmt.Sprintf("127.0.0.1:%d", upPort),
		"http://127.0.0.1:9998", op.Issuer,
		"client_id demo", "client_id web",
		"{env.DEMO_CLIENT_SECRET}", "web-secret",
		"azat {", "refresh_before 1s\n\t\t\tazat {",
	).Replace(string(b))
	logs := startCaddy(t, cf, site+"/manifest/x")

	c := browser()
	login(t, c, op, site)
	// What the example page's script does: an AZAT and a manifest.
	resp, err := c.Get(site + "/auth/token")
	must(t, err)
	var tok struct{ Token string }
	must(t, json.NewDecoder(resp.Body).Decode(&tok))
	resp.Body.Close()
	if resp.StatusCode != 200 || tok.Token == "" {
		t.Fatalf("token: %d", resp.StatusCode)
	}
	resp, err = c.Post(site+"/api/manifest", "application/json", strings.NewReader(`{}`))
	must(t, err)
	var man struct{ Path string }
	must(t, json.NewDecoder(resp.Body).Decode(&man))
	resp.Body.Close()

	cmdline := fmt.Sprintf(`curl --silent --show-error --fail '%s%s' | curl --silent --show-error --fail --header "Authorization: Bearer %s" --config -`,
		site, man.Path, tok.Token)
	for round := 1; round <= 2; round++ {
		time.Sleep(2500 * time.Millisecond) // the provider's access token expires
		before := op.TokenCalls("refresh_token")
		dir := t.TempDir()
		cmd := exec.Command("bash", "-o", "pipefail", "-c", cmdline)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("round %d: command line failed: %v\n%s", round, err, out)
		}
		for _, f := range []string{"README.txt", "sample-1.fastq", "sample-2.fastq"} {
			got, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil || len(got) == 0 {
				t.Fatalf("round %d: %s not downloaded: %v", round, f, err)
			}
		}
		if n := op.TokenCalls("refresh_token") - before; n != 1 {
			t.Fatalf("round %d: %d refreshes at the OP, want 1", round, n)
		}
	}

	// Without the token, or with a revoked one, curl fails.
	bad := exec.Command("curl", "--silent", "--fail", site+"/files/README.txt")
	if err := bad.Run(); err == nil {
		t.Fatal("file downloaded without a token")
	}
	req, _ := http.NewRequest("POST", site+"/auth/revoke", nil)
	resp, err = c.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("revoke: %d", resp.StatusCode)
	}
	revoked := exec.Command("curl", "--silent", "--fail", "--header", "Authorization: Bearer "+tok.Token, site+"/files/README.txt")
	if err := revoked.Run(); err == nil {
		t.Fatal("revoked AZAT still downloads")
	}
	// No token appears in Caddy's log.
	if strings.Contains(logs.String(), tok.Token) || strings.Contains(logs.String(), "web-secret") {
		t.Fatal("a token or the client secret appears in Caddy's log")
	}
}
