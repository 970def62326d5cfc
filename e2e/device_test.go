package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

var (
	userCodeRe = regexp.MustCompile(`enter the code ([B-Z]{4}-[B-Z]{4})`)
	csrfRe     = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
)

// cliLogin starts `caddy oidc-login --print --insecure site` (the test
// site is plain http) and returns the user code it printed, and a function
// that waits for it to end.
func cliLogin(t *testing.T, home, site string) (string, func() (stdout string, stderr string, err error)) {
	t.Helper()
	cmd := exec.Command(caddyBin(t), "oidc-login", "--print", "--insecure", site)
	cmd.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	errPipe, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	var stderr bytes.Buffer
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(errPipe)
		for sc.Scan() {
			stderr.WriteString(sc.Text() + "\n")
			if m := userCodeRe.FindStringSubmatch(sc.Text()); m != nil {
				found <- m[1]
			}
		}
		_, _ = io.Copy(io.Discard, errPipe)
	}()
	var code string
	select {
	case code = <-found:
	case <-time.After(30 * time.Second):
		t.Fatalf("the CLI printed no user code: %s", stderr.String())
	}
	return code, func() (string, string, error) {
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			return stdout.String(), stderr.String(), err
		case <-time.After(60 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("oidc-login did not finish: %s", stderr.String())
			return "", "", nil
		}
	}
}

// approve decides on a user code as the logged-in browser c.
func approve(t *testing.T, c *http.Client, site, code, action string) {
	t.Helper()
	resp, err := c.Get(site + "/auth/device?user_code=" + url.QueryEscape(code))
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := csrfRe.FindSubmatch(page)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("device page: %d %s", resp.StatusCode, page)
	}
	csrf := strings.ReplaceAll(strings.ReplaceAll(string(m[1]), "&#43;", "+"), "&amp;", "&")
	// The user types the code the CLI printed, as the page requires.
	form := url.Values{"user_code": {code}, "csrf": {csrf}, "action": {action}, "confirm_code": {code}}
	req, _ := http.NewRequest("POST", site+"/auth/device", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Origin", site)
	resp, err = c.Do(req)
	must(t, err)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("%s: %d", action, resp.StatusCode)
	}
}

// TestCLIDeviceLogin: the real `caddy oidc-login` polls the real Caddy, a
// browser session approves, the CLI stores and prints a working AZAT.
func TestCLIDeviceLogin(t *testing.T) {
	op := startOP(t, testop.Options{})
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, r.Header.Get("X-Auth-Request-User"))
	}))
	t.Cleanup(up.Close)
	port := freePort(t)
	site := fmt.Sprintf("http://127.0.0.1:%d", port)
	startCaddy(t, fmt.Sprintf(`{
	admin off
	auto_https off
}
%s {
	oidc {
		issuer %s
		client_id web
		client_secret web-secret
		scopes openid profile email offline_access
		azat
	}
	reverse_proxy %s
}`, site, op.Issuer, strings.TrimPrefix(up.URL, "http://")), site+"/auth/device")
	c := browser()
	login(t, c, op, site)
	home := t.TempDir()

	code, wait := cliLogin(t, home, site)
	approve(t, c, site, code, "approve")
	stdout, stderr, err := wait()
	if err != nil {
		t.Fatalf("oidc-login: %v\n%s", err, stderr)
	}
	token := strings.TrimSpace(stdout)
	if strings.Count(token, ".") != 2 {
		t.Fatalf("printed token %q", token)
	}
	// Stored 0600 in the config directory.
	store := filepath.Join(home, ".config", "caddy-oidc", "tokens.json")
	fi, err := os.Stat(store)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("token file: %v %v", err, fi)
	}
	// curl -H "Authorization: Bearer $(caddy oidc-login --print site)" works.
	curl := exec.Command("timeout", "30", "bash", "-c", fmt.Sprintf(`curl --silent --fail -H "Authorization: Bearer $(%s oidc-login --print --insecure %s)" %s/api`,
		caddyBin(t), site, site))
	curl.Env = append(os.Environ(), "HOME="+home, "XDG_CONFIG_HOME="+filepath.Join(home, ".config"))
	out, err := curl.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != testop.UserID {
		t.Fatalf("curl with the stored token: %v %q", err, out)
	}

	// Without --insecure, an http:// site is refused before any request,
	// even with a stored token for it.
	refused := exec.Command(caddyBin(t), "oidc-login", "--print", site)
	refused.Env = curl.Env
	out, err = refused.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "--insecure") || strings.Contains(string(out), token) {
		t.Fatalf("oidc-login of an http:// site without --insecure: %v %q", err, out)
	}

	// Denial: the CLI fails with access_denied.
	code, wait = cliLogin(t, t.TempDir(), site)
	approve(t, c, site, code, "deny")
	_, stderr, err = wait()
	if err == nil || !strings.Contains(stderr, "access_denied") {
		t.Fatalf("denied login: %v\n%s", err, stderr)
	}
}
