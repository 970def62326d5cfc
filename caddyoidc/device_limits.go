package caddyoidc

import (
	"context"
	"errors"
	"io/fs"
	"math"
	"net"
	"net/http"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// Bounds of the unauthenticated POST <routes>/device/code. The rate limits
// are per instance (in memory: they bound this instance's work); the cap on
// pending codes is counted in storage, because instances sharing a storage
// share its records and its space: a per-instance count would let N
// instances hold N times the cap.
const (
	// deviceCodesPerIP codes per minute (and burst) per client IP (IPv6:
	// per /64).
	deviceCodesPerIP = 10
	// deviceCodesGlobal codes per minute (and burst) for the whole handler.
	deviceCodesGlobal = 100
	// maxPendingDeviceCodes is the cap on device codes in storage (pending,
	// decided and not yet expired or collected) for the handler.
	maxPendingDeviceCodes = 1000
	// maxDeviceIPs bounds the per-IP table; beyond, new IPs are refused
	// until idle entries can be dropped.
	maxDeviceIPs = 10000
	// deviceSweepBatch bounds the records one sweep loads.
	deviceSweepBatch = 200
	// deviceSweepEvery is the period of the background sweep.
	deviceSweepEvery = time.Minute
	// maxDeviceForm bounds the body of POST <routes>/device and
	// <routes>/device/code.
	maxDeviceForm = 4096
)

// tokenBucket is a token bucket holding at most burst tokens, refilled at
// burst per minute.
type tokenBucket struct {
	tokens float64
	last   time.Time
	warned bool // a refusal was logged since the last success
}

// refill brings b up to now.
func (b *tokenBucket) refill(now time.Time, burst float64) {
	if b.last.IsZero() {
		b.tokens = burst
	} else if d := now.Sub(b.last); d > 0 {
		b.tokens = math.Min(burst, b.tokens+d.Minutes()*burst)
	}
	b.last = now
}

// wait is how long until b holds one token (0 when it does).
func (b *tokenBucket) wait(burst float64) time.Duration {
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / burst * float64(time.Minute))
}

// deviceLimits holds the in-memory rate limits of POST <routes>/device/code
// and the background sweeps' positions in their listings.
type deviceLimits struct {
	mu     sync.Mutex
	perIP  map[string]*tokenBucket
	global tokenBucket
	// codes, users and tries are where the next sweep of device/code,
	// device/user and device/tries starts.
	codes, users, tries listCursor
}

// deviceRefusal is why a device authorization request is refused (429).
type deviceRefusal struct {
	code  string // slow_down (this client) or temporarily_unavailable (everyone)
	retry time.Duration
	why   string
	log   bool // first refusal of a burst: worth a Warn line
}

// allow takes one token from ip's bucket and the global one, or neither:
// nil when the request may go on.
func (l *deviceLimits) allow(ip string, now time.Time) *deviceRefusal {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perIP == nil {
		l.perIP = map[string]*tokenBucket{}
	}
	b := l.perIP[ip]
	if b == nil {
		if len(l.perIP) >= maxDeviceIPs {
			for k, v := range l.perIP {
				if v.refill(now, deviceCodesPerIP); v.tokens >= deviceCodesPerIP {
					delete(l.perIP, k) // idle: a fresh bucket is the same
				}
			}
		}
		if len(l.perIP) >= maxDeviceIPs {
			return &deviceRefusal{code: "temporarily_unavailable", retry: time.Minute, why: "too many clients", log: true}
		}
		b = &tokenBucket{}
		l.perIP[ip] = b
	}
	b.refill(now, deviceCodesPerIP)
	l.global.refill(now, deviceCodesGlobal)
	if w := b.wait(deviceCodesPerIP); w > 0 {
		r := &deviceRefusal{code: "slow_down", retry: w, why: "per-IP rate limit", log: !b.warned}
		b.warned = true
		return r
	}
	if w := l.global.wait(deviceCodesGlobal); w > 0 {
		r := &deviceRefusal{code: "temporarily_unavailable", retry: w, why: "global rate limit", log: !l.global.warned}
		l.global.warned = true
		return r
	}
	b.tokens--
	l.global.tokens--
	b.warned, l.global.warned = false, false
	return nil
}

// retryAfter is the Retry-After value for d: whole seconds, at least 1.
func retryAfter(d time.Duration) string {
	return strconv.Itoa(max(1, int(math.Ceil(d.Seconds()))))
}

// clientIP is the client's address as Caddy determined it (the
// connection's, or the forwarded one from a trusted proxy).
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		return host
	}
	return r.RemoteAddr
}

// rateKey is the rate-limit key of a client IP: the address for IPv4, its
// /64 for IPv6 (one host usually has a whole /64).
func rateKey(ip string) string {
	a := net.ParseIP(ip)
	if a == nil {
		return ip
	}
	if a.To4() != nil {
		return a.To4().String()
	}
	return a.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

// isDeviceCodeKey tells a device record's key (.../<64 hex>) from other
// entries of the listing (locks, temporary files).
func isDeviceCodeKey(k string) bool {
	name := path.Base(k)
	if len(name) != 64 {
		return false
	}
	for _, c := range name {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// deviceCodeKeys lists the device records in storage.
func (o *OIDC) deviceCodeKeys(ctx context.Context) ([]string, error) {
	keys, err := o.storage.List(ctx, o.key("device/code"), false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	out := keys[:0]
	for _, k := range keys {
		if isDeviceCodeKey(k) {
			out = append(out, k)
		}
	}
	return out, nil
}

// pendingRoom tells whether another device code may be stored: fewer than
// maxPendingDeviceCodes records, after a bounded sweep when at the cap.
func (o *OIDC) pendingRoom(ctx context.Context) (bool, error) {
	keys, err := o.deviceCodeKeys(ctx)
	if err != nil {
		return false, err
	}
	if len(keys) < maxPendingDeviceCodes {
		return true, nil
	}
	deleted := o.sweepDeviceCodes(ctx, keys)
	return len(keys)-deleted < maxPendingDeviceCodes, nil
}

// sweepDeviceCodes loads at most deviceSweepBatch of keys, starting where
// the previous sweep stopped, and deletes the expired ones (with their user
// code). It returns how many it deleted.
func (o *OIDC) sweepDeviceCodes(ctx context.Context, keys []string) int {
	batch := o.rt.device.codes.window(keys, deviceSweepBatch)
	now := time.Now().Unix()
	deleted := 0
	for _, k := range batch {
		rec, err := o.loadDevice(ctx, k)
		if errors.Is(err, fs.ErrNotExist) {
			continue // used or collected meanwhile
		}
		if err != nil || now >= rec.Expires {
			if rec == nil {
				rec = &deviceRecord{}
			}
			o.deleteDevice(ctx, k, rec)
			deleted++
		}
	}
	if deleted > 0 {
		o.logger.Debug("device flow: expired records deleted", zap.Int("deleted", deleted), zap.Int("examined", len(batch)))
	}
	return deleted
}

// sweepDevices deletes expired device records and wrong-code counters
// every deviceSweepEvery (a bounded batch each time), until ctx ends.
func (o *OIDC) sweepDevices(ctx context.Context) {
	if o.azat == nil || !o.azat.CanMint() {
		return
	}
	t := time.NewTicker(deviceSweepEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if keys, err := o.deviceCodeKeys(ctx); err == nil {
			o.sweepDeviceCodes(ctx, keys)
		}
		o.sweepUserCodes(ctx)
		o.sweepCodeTries(ctx)
	}
}

// sweepUserCodes examines at most deviceSweepBatch user-code records,
// starting where the previous sweep stopped, and deletes those whose device
// record is gone (left by a failed delete). A user code is stored after its
// device record, so a live one is never taken for an orphan.
func (o *OIDC) sweepUserCodes(ctx context.Context) {
	keys, err := o.storage.List(ctx, o.key("device/user"), false)
	if err != nil {
		return
	}
	for _, k := range o.rt.device.users.window(keys, deviceSweepBatch) {
		if normalizeUserCode(path.Base(k)) == "" {
			continue
		}
		b, err := o.storage.Load(ctx, k)
		if err == nil && !o.storage.Exists(ctx, string(b)) {
			_ = o.storage.Delete(ctx, k)
		}
	}
}
