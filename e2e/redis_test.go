package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/testop"
)

// redisServer is a redis-server run by a test.
type redisServer struct {
	Addr string
	Port int
}

// startRedis runs a throwaway redis-server on a free loopback port (no
// persistence) until the test ends.
func startRedis(t *testing.T) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is required for this test: apt-get install -y redis-server")
	}
	port := freePort(t)
	process(t, nil, bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--dir", t.TempDir())
	rs := &redisServer{Addr: fmt.Sprintf("127.0.0.1:%d", port), Port: port}
	deadline := time.Now().Add(15 * time.Second)
	for {
		reply, err := rs.do(0, "PING")
		if err == nil && len(reply) == 1 && reply[0] == "PONG" {
			return rs
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis-server on %s did not answer PING: %v %q", rs.Addr, err, reply)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// do sends one command to database db and returns the reply's strings (a
// simple or bulk string, or an array of bulk strings).
func (rs *redisServer) do(db int, args ...string) ([]string, error) {
	conn, err := net.DialTimeout("tcp", rs.Addr, time.Second)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	cmds := [][]string{args}
	if db != 0 {
		cmds = [][]string{{"SELECT", strconv.Itoa(db)}, args}
	}
	var b strings.Builder
	for _, cmd := range cmds {
		fmt.Fprintf(&b, "*%d\r\n", len(cmd))
		for _, a := range cmd {
			fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := io.WriteString(conn, b.String()); err != nil {
		return nil, err
	}
	r := bufio.NewReader(conn)
	var out []string
	for range cmds {
		if out, err = readRESP(r); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// readRESP reads one reply of the subset of RESP that do needs.
func readRESP(r *bufio.Reader) ([]string, error) {
	line, err := r.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimSuffix(line, "\r\n")
	if line == "" {
		return nil, fmt.Errorf("empty reply")
	}
	switch line[0] {
	case '+', ':':
		return []string{line[1:]}, nil
	case '-':
		return nil, fmt.Errorf("redis: %s", line[1:])
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return nil, err
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, err
		}
		return []string{string(buf[:n])}, nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		var out []string
		for i := 0; i < n; i++ {
			s, err := readRESP(r)
			if err != nil {
				return nil, err
			}
			out = append(out, s...)
		}
		return out, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}

// startCaddyNoWait writes a Caddyfile and runs Caddy on it, with its own
// data and config dirs, without waiting for it to listen.
func startCaddyNoWait(t *testing.T, caddyfile string) *syncBuffer {
	t.Helper()
	dir := t.TempDir()
	cf := filepath.Join(dir, "Caddyfile")
	must(t, os.WriteFile(cf, []byte(caddyfile), 0o600))
	return process(t, []string{"XDG_DATA_HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "HOME=" + dir},
		caddyBin(t), "run", "--config", cf, "--adapter", "caddyfile")
}

// TestTwoInstancesShareRedis runs two Caddy processes with the same oidc
// configuration on one Redis storage: an AZAT minted by one works on the
// other, so does the session cookie, a refresh storm across both refreshes
// once at the provider, and a revocation on one is seen by the other.
func TestTwoInstancesShareRedis(t *testing.T) {
	const (
		redisDB     = 3
		redisPrefix = "caddy-oidc-e2e"
	)
	rs := startRedis(t)
	op := startOP(t, testop.Options{AccessTokenLifetime: 2 * time.Second})

	var (
		hits     [2]atomic.Int64 // upstream requests via A and via B
		users    sync.Map        // X-Auth-Request-User values seen upstream
		upTokens sync.Map        // path -> access token sent upstream
		azat     atomic.Value
	)
	azat.Store("")
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The provider's access token, never the AZAT, comes upstream.
		at, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
		if !ok || at == "" || at == azat.Load() {
			http.Error(w, "upstream: no provider access token", http.StatusInternalServerError)
			return
		}
		upTokens.Store(r.URL.Path, at)
		users.Store(r.Header.Get("X-Auth-Request-User"), true)
		switch r.Header.Get("X-Instance") {
		case "A":
			hits[0].Add(1)
		case "B":
			hits[1].Add(1)
		}
		fmt.Fprintln(w, "upstream ok")
	}))
	t.Cleanup(up.Close)

	caddyfile := func(port int, name string) string {
		return fmt.Sprintf(`{
	auto_https off
	admin off
	storage redis {
		host 127.0.0.1
		port %d
		db %d
		key_prefix %s
	}
}

http://127.0.0.1:%d {
	oidc {
		issuer %s
		client_id web
		client_secret web-secret
		namespace e2e-shared
		scopes openid profile email offline_access
		refresh_before 1s
		azat {
			issuer http://azat.test
		}
	}
	reverse_proxy %s {
		header_up X-Instance %s
	}
}
`, rs.Port, redisDB, redisPrefix, port, op.Issuer, strings.TrimPrefix(up.URL, "http://"), name)
	}

	// Both instances start at once: the cookie secret, the grant secret and
	// the AZAT signing key are each created once, under a Redis lock.
	portA, portB := freePort(t), freePort(t)
	siteA := fmt.Sprintf("http://127.0.0.1:%d", portA)
	siteB := fmt.Sprintf("http://127.0.0.1:%d", portB)
	caddyBin(t) // built before the clock starts
	start := time.Now()
	logsA := startCaddyNoWait(t, caddyfile(portA, "A"))
	logsB := startCaddyNoWait(t, caddyfile(portB, "B"))
	waitHTTP(t, siteA+"/")
	waitHTTP(t, siteB+"/")
	t.Logf("both instances up in %v", time.Since(start).Round(time.Millisecond))

	keys, err := rs.do(redisDB, "KEYS", redisPrefix+"*")
	must(t, err)
	if len(keys) == 0 {
		t.Fatalf("nothing stored in Redis db %d under %s", redisDB, redisPrefix)
	}
	t.Logf("%d Redis keys under %s after start-up", len(keys), redisPrefix)

	get := func(c *http.Client, u, bearer string) (int, string) {
		t.Helper()
		req, err := http.NewRequest("GET", u, nil)
		must(t, err)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := c.Do(req)
		must(t, err)
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// Log in on A and get an AZAT there.
	c := browser()
	login(t, c, op, siteA)
	resp, err := c.Get(siteA + "/auth/token")
	must(t, err)
	var tok struct{ Token string }
	must(t, json.NewDecoder(resp.Body).Decode(&tok))
	resp.Body.Close()
	if resp.StatusCode != 200 || tok.Token == "" {
		t.Fatalf("token on A: %d", resp.StatusCode)
	}
	azat.Store(tok.Token)

	// The AZAT works on B, and on A.
	plain := &http.Client{}
	if code, body := get(plain, siteB+"/data", tok.Token); code != 200 {
		t.Fatalf("AZAT from A on B: %d %s", code, body)
	}
	if code, body := get(plain, siteA+"/data", tok.Token); code != 200 {
		t.Fatalf("AZAT from A on A: %d %s", code, body)
	}
	if hits[0].Load() != 1 || hits[1].Load() != 1 {
		t.Fatalf("upstream hits A=%d B=%d, want 1 and 1", hits[0].Load(), hits[1].Load())
	}

	// The session cookie set by A works on B. (Go's cookie jar ignores
	// ports, so the browser sends A's cookies to B.)
	if u, _ := url.Parse(siteB); len(c.Jar.Cookies(u)) == 0 {
		t.Fatal("no cookies from A's login")
	}
	if code, body := get(c, siteB+"/page", ""); code != 200 {
		t.Fatalf("A's session cookie on B: %d %s", code, body)
	}
	if hits[1].Load() != 2 {
		t.Fatalf("upstream hits from B = %d, want 2", hits[1].Load())
	}
	// And a cookie-less client is refused on B.
	if code, _ := get(plain, siteB+"/page", ""); code == 200 {
		t.Fatal("B answered 200 without a cookie or a token")
	}

	// Refresh storm: the provider's access token has expired; 100 requests
	// with the AZAT at once, half on A and half on B. Each instance makes
	// one refresh flight; the flights serialize on the grant's Redis lock
	// (polled every second), and the one that gets it second must reuse the
	// tokens the first stored: one refresh at the OP, one access token
	// upstream.
	time.Sleep(2500 * time.Millisecond)
	before := op.TokenCalls("refresh_token")
	hitsBefore := [2]int64{hits[0].Load(), hits[1].Load()}
	const n = 100
	storm := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	var (
		wg      sync.WaitGroup
		codes   [n]int
		bodies  [n]string
		elapsed [n]time.Duration
		fire    = make(chan struct{})
	)
	for i := 0; i < n; i++ {
		site := siteA
		if i%2 == 1 {
			site = siteB
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("GET", site+"/storm/"+strconv.Itoa(i), nil)
			req.Header.Set("Authorization", "Bearer "+tok.Token)
			<-fire
			t0 := time.Now()
			resp, err := storm.Do(req)
			elapsed[i] = time.Since(t0)
			if err != nil {
				bodies[i] = err.Error()
				return
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			codes[i], bodies[i] = resp.StatusCode, string(b)
		}()
	}
	stormStart := time.Now()
	close(fire)
	wg.Wait()
	stormTime := time.Since(stormStart)
	var slowA, slowB time.Duration
	for i := 0; i < n; i++ {
		if codes[i] != 200 {
			t.Errorf("storm request %d (%s): %d %s", i, map[bool]string{true: "A", false: "B"}[i%2 == 0], codes[i], bodies[i])
		}
		if i%2 == 0 {
			slowA = max(slowA, elapsed[i])
		} else {
			slowB = max(slowB, elapsed[i])
		}
	}
	refreshes := op.TokenCalls("refresh_token") - before
	t.Logf("storm: %d requests in %v (slowest on A %v, on B %v), %d refresh(es) at the OP",
		n, stormTime.Round(time.Millisecond), slowA.Round(time.Millisecond), slowB.Round(time.Millisecond), refreshes)
	stormTokens := map[string]int{}
	for i := 0; i < n; i++ {
		if at, ok := upTokens.Load("/storm/" + strconv.Itoa(i)); ok {
			stormTokens[at.(string)]++
		}
	}
	if len(stormTokens) != 1 {
		t.Errorf("storm: %d different provider access tokens went upstream, want 1", len(stormTokens))
	}
	if refreshes != 1 {
		t.Errorf("storm: %d refreshes at the OP, want exactly 1", refreshes)
	}
	if a, b := hits[0].Load()-hitsBefore[0], hits[1].Load()-hitsBefore[1]; a != n/2 || b != n/2 {
		t.Errorf("storm: upstream hits A=%d B=%d, want %d each", a, b, n/2)
	}

	// Revoke on B with the AZAT: refused on A too (once A's grant cache,
	// 1 s by default, has expired), and on B at once.
	req, _ := http.NewRequest("POST", siteB+"/auth/revoke", nil)
	req.Header.Set("Authorization", "Bearer "+tok.Token)
	resp, err = plain.Do(req)
	must(t, err)
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("revoke on B: %d %s", resp.StatusCode, b)
	}
	revoked := time.Now()
	if code, body := get(plain, siteB+"/data", tok.Token); code != 401 {
		t.Fatalf("revoked AZAT on B: %d %s", code, body)
	}
	for {
		code, body := get(plain, siteA+"/data", tok.Token)
		if code == 401 {
			t.Logf("revoked on B, refused on A after %v", time.Since(revoked).Round(time.Millisecond))
			break
		}
		if code != 200 || time.Since(revoked) > 3*time.Second {
			t.Fatalf("revoked AZAT on A: %d %s (%v after the revocation)", code, body, time.Since(revoked))
		}
		time.Sleep(100 * time.Millisecond)
	}

	users.Range(func(k, _ any) bool {
		if k.(string) == "" {
			t.Error("a request reached the upstream without X-Auth-Request-User")
		}
		return true
	})
	for name, logs := range map[string]*syncBuffer{"A": logsA, "B": logsB} {
		if strings.Contains(logs.String(), tok.Token) || strings.Contains(logs.String(), "web-secret") {
			t.Errorf("a token or the client secret appears in %s's log", name)
		}
	}
}
