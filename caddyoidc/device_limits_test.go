package caddyoidc

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/caddy-oidc/caddy-oidc/azatauth"
)

// TestDeviceRateLimits: one IP gets its burst of 10 then slow_down with the
// time to the next token; other IPs go on until the global burst of 100 is
// spent (temporarily_unavailable); a refused request takes no token, and
// tokens come back at the configured rate.
func TestDeviceRateLimits(t *testing.T) {
	var l deviceLimits
	now := time.Unix(1_000_000, 0)
	for i := range deviceCodesPerIP {
		if no := l.allow("1.1.1.1", now); no != nil {
			t.Fatalf("request %d refused: %+v", i, no)
		}
	}
	no := l.allow("1.1.1.1", now)
	if no == nil || no.code != "slow_down" || no.retry != 6*time.Second || !no.log {
		t.Fatalf("11th request: %+v", no)
	}
	if no := l.allow("1.1.1.1", now); no == nil || no.log {
		t.Fatalf("12th request: %+v (logged once per burst)", no)
	}
	if no := l.allow("1.1.1.1", now.Add(6*time.Second)); no != nil {
		t.Fatalf("after 6 s: %+v", no)
	}
	// At 6 s the global bucket refilled to its burst (10 per 6 s), less the
	// one just taken: 99 more from other IPs spend it.
	for i := range deviceCodesGlobal - 1 {
		if no := l.allow("10.0.0."+itoa(int64(i/5)), now.Add(6*time.Second)); no != nil {
			t.Fatalf("global request %d: %+v", i, no)
		}
	}
	no = l.allow("192.0.2.1", now.Add(6*time.Second))
	if no == nil || no.code != "temporarily_unavailable" || no.retry <= 0 || no.retry > time.Second {
		t.Fatalf("over the global burst: %+v", no)
	}
	// The refused request did not spend 192.0.2.1's tokens.
	if b := l.perIP["192.0.2.1"]; b == nil || b.tokens != deviceCodesPerIP {
		t.Fatalf("refused request took a per-IP token: %+v", b)
	}
	if got := retryAfter(1500 * time.Millisecond); got != "2" {
		t.Fatalf("retryAfter(1.5s) = %s", got)
	}
	if got := retryAfter(0); got != "1" {
		t.Fatalf("retryAfter(0) = %s", got)
	}
}

// TestDeviceRateKey: IPv6 clients are limited per /64 (one host usually
// has all of it), IPv4 per address.
func TestDeviceRateKey(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7":            "192.0.2.7",
		"::ffff:192.0.2.7":     "192.0.2.7",
		"2001:db8:1:2:3:4:5:6": "2001:db8:1:2::/64",
		"2001:db8:1:2:ffff::1": "2001:db8:1:2::/64",
		"not-an-ip":            "not-an-ip",
	} {
		if got := rateKey(in); got != want {
			t.Errorf("rateKey(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestDeviceIPTableBounded: a flood from ever new addresses cannot grow the
// per-IP table past maxDeviceIPs; idle entries are dropped first.
func TestDeviceIPTableBounded(t *testing.T) {
	var l deviceLimits
	now := time.Unix(1_000_000, 0)
	l.global.tokens, l.global.last = 1e9, now // only the table matters here
	l.perIP = map[string]*tokenBucket{}
	for i := range maxDeviceIPs {
		l.perIP["ip"+itoa(int64(i))] = &tokenBucket{tokens: 0, last: now}
	}
	if no := l.allow("new", now); no == nil || no.code != "temporarily_unavailable" {
		t.Fatalf("table full of busy IPs: %+v", no)
	}
	if len(l.perIP) > maxDeviceIPs {
		t.Fatalf("table grew to %d", len(l.perIP))
	}
	// A minute later every entry is idle: dropped, the new IP gets in.
	if no := l.allow("new", now.Add(time.Minute)); no != nil || len(l.perIP) != 1 {
		t.Fatalf("after a minute: %+v, %d entries", no, len(l.perIP))
	}
}

// TestCodeTries: wrong codes older than the window are forgotten; at the
// limit, Retry-After is the time until the oldest leaves the window.
func TestCodeTries(t *testing.T) {
	now := time.Unix(2_000_000, 0)
	var c codeTries
	c.Times = append(c.Times, now.Add(-11*time.Minute).UnixMilli())
	for i := range maxUserCodeTries - 1 {
		c.Times = append(c.Times, now.Add(-time.Duration(9-i)*time.Minute).UnixMilli())
	}
	c.prune(now)
	if out, _ := c.exhausted(now); out || len(c.Times) != maxUserCodeTries-1 {
		t.Fatalf("after prune: %d tries, exhausted %v", len(c.Times), out)
	}
	c.Times = append(c.Times, now.UnixMilli())
	out, wait := c.exhausted(now)
	if !out || wait != time.Minute {
		t.Fatalf("at the limit: %v, retry in %s (want 1m)", out, wait)
	}
}

// TestDeviceSweep: the background sweep deletes expired device records with
// their user codes, orphaned user codes and spent wrong-code counters, and
// keeps live ones.
func TestDeviceSweep(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	o := &OIDC{storage: st, logger: zap.NewNop(), rt: &runtime{root: "caddy-oidc/"}}
	put := func(code, userCode string, exp time.Time) {
		rec := &deviceRecord{UserCode: userCode, Expires: exp.Unix(), Status: "pending"}
		if err := o.storeDevice(ctx, code, rec); err != nil {
			t.Fatal(err)
		}
		_ = st.Store(ctx, o.userCodeKey(userCode), []byte(o.deviceKey(code)))
	}
	now := time.Now()
	put("live", "BBBBBBBB", now.Add(time.Minute))
	put("dead", "CCCCCCCC", now.Add(-time.Second))
	_ = st.Store(ctx, o.userCodeKey("DDDDDDDD"), []byte(o.deviceKey("gone"))) // orphan
	spent, _ := json.Marshal(codeTries{Times: []int64{now.Add(-time.Hour).UnixMilli()}})
	fresh, _ := json.Marshal(codeTries{Times: []int64{now.UnixMilli()}})
	_ = st.Store(ctx, o.key("device/tries/"+strings.Repeat("a", 64)), spent)
	_ = st.Store(ctx, o.key("device/tries/"+strings.Repeat("b", 64)), fresh)

	keys, err := o.deviceCodeKeys(ctx)
	if err != nil || len(keys) != 2 {
		t.Fatalf("keys %v %v", keys, err)
	}
	if n := o.sweepDeviceCodes(ctx, keys); n != 1 {
		t.Fatalf("deleted %d, want 1", n)
	}
	o.sweepUserCodes(ctx)
	o.sweepCodeTries(ctx)
	for key, want := range map[string]bool{
		o.deviceKey("live"): true, o.userCodeKey("BBBBBBBB"): true,
		o.deviceKey("dead"): false, o.userCodeKey("CCCCCCCC"): false,
		o.userCodeKey("DDDDDDDD"):                        false,
		o.key("device/tries/" + strings.Repeat("a", 64)): false,
		o.key("device/tries/" + strings.Repeat("b", 64)): true,
	} {
		if got := st.Exists(ctx, key); got != want {
			t.Errorf("%s exists %v, want %v", key, got, want)
		}
	}
}

// TestApprovalStands: an approval mints only for a usable grant whose
// MinJTI is the one recorded at approval (no revocation since); a record
// without one (older version) never does.
func TestApprovalStands(t *testing.T) {
	g := &azatauth.Grant{Key: "op#alice", RefreshToken: "rt", MinJTI: 100, MaxJTI: 105}
	for _, tt := range []struct {
		name string
		rec  deviceRecord
		g    *azatauth.Grant
		want bool
	}{
		{"unchanged", deviceRecord{MinJTI: 100}, g, true},
		{"revoked since", deviceRecord{MinJTI: 99}, g, false},
		{"no recorded window", deviceRecord{}, g, false},
		{"tombstone", deviceRecord{MinJTI: 100}, &azatauth.Grant{Key: "op#alice", MinJTI: 100, MaxJTI: 100}, false},
		{"no grant", deviceRecord{MinJTI: 100}, nil, false},
	} {
		if got := approvalStands(&tt.rec, tt.g); got != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, got, tt.want)
		}
	}
}

// TestCodeTriesLinks: link misses have their own budget: spending it
// does not exhaust the wrong-code budget, and both leave the window.
func TestCodeTriesLinks(t *testing.T) {
	now := time.Unix(2_000_000, 0)
	var c codeTries
	for range maxUserCodeTries {
		c.Links = append(c.Links, now.Add(-time.Minute).UnixMilli())
	}
	if out, _ := c.exhausted(now); out || !c.linksSpent() {
		t.Fatalf("links spent: exhausted %v, linksSpent %v", out, c.linksSpent())
	}
	c.prune(now.Add(userCodeTryWindow))
	if c.linksSpent() || len(c.Links) != 0 {
		t.Fatalf("after the window: %d link misses", len(c.Links))
	}
}

// TestDeviceSweepsReachPastFirstBatch: live entries that sort first do not
// pin the user-code and wrong-code sweeps to the first deviceSweepBatch
// listed keys (the session sweep's red-team shape): an orphaned user code
// and a spent counter listed after more than a batch of live ones are
// deleted within two sweeps, and the live ones are kept.
func TestDeviceSweepsReachPastFirstBatch(t *testing.T) {
	ctx := context.Background()
	st := &certmagic.FileStorage{Path: t.TempDir()}
	o := &OIDC{storage: st, logger: zap.NewNop(), rt: &runtime{root: "caddy-oidc/"}}
	now := time.Now()
	if err := o.storeDevice(ctx, "live", &deviceRecord{UserCode: "BBBBBBBB", Expires: now.Add(time.Minute).Unix(), Status: "pending"}); err != nil {
		t.Fatal(err)
	}
	fresh, _ := json.Marshal(codeTries{Times: []int64{now.UnixMilli()}})
	spent, _ := json.Marshal(codeTries{Links: []int64{now.Add(-time.Hour).UnixMilli()}})
	live := deviceSweepBatch + 50
	for i := range live {
		// User codes BB..B<x><y> and counters 0...0<hex>: all sort before
		// the orphan ZZZZZZZZ and the spent counter f...f.
		uc := "BBBBBB" + string(userCodeAlphabet[i/len(userCodeAlphabet)]) + string(userCodeAlphabet[i%len(userCodeAlphabet)])
		_ = st.Store(ctx, o.userCodeKey(uc), []byte(o.deviceKey("live")))
		_ = st.Store(ctx, o.key("device/tries/"+fmt.Sprintf("%064x", i)), fresh)
	}
	_ = st.Store(ctx, o.userCodeKey("ZZZZZZZZ"), []byte(o.deviceKey("gone")))
	spentKey := o.key("device/tries/" + strings.Repeat("f", 64))
	_ = st.Store(ctx, spentKey, spent)
	for range 2 {
		o.sweepUserCodes(ctx)
		o.sweepCodeTries(ctx)
	}
	if st.Exists(ctx, o.userCodeKey("ZZZZZZZZ")) {
		t.Error("an orphaned user code listed after a batch of live ones survives the sweeps")
	}
	if st.Exists(ctx, spentKey) {
		t.Error("a spent wrong-code counter listed after a batch of live ones survives the sweeps")
	}
	users, _ := st.List(ctx, o.key("device/user"), false)
	tries, _ := st.List(ctx, o.key("device/tries"), false)
	if len(users) != live || len(tries) != live {
		t.Fatalf("live entries deleted: %d user codes, %d counters, want %d", len(users), len(tries), live)
	}
}
