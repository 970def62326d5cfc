package caddyoidc

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"time"
)

// Wrong user codes are limited per user (issuer and subject, whatever the
// browser session), in storage so that every instance sharing it counts
// the same tries. Two budgets:
//
//   - Times: wrong codes of same-origin, CSRF-checked POSTs (a lookup of a
//     code that is not pending, an approval whose typed code does not
//     match). When spent, every code submission gets 429 until the oldest
//     leaves the window. Another site cannot spend it.
//   - Links: misses of GET ?user_code= (verification_uri_complete), which
//     any web page can make the user's browser send. When spent, a link no
//     longer looks its code up: the page shows the lookup form with the
//     code filled in, and Continue is a POST counted in Times. So links are
//     no unbounded oracle, and another site spending this budget only costs
//     the user one click, never a lockout.
const (
	// maxUserCodeTries wrong codes per user, budget and window.
	maxUserCodeTries  = 10
	userCodeTryWindow = 10 * time.Minute
)

// codeTries are the times (unix ms) of a user's recent wrong codes.
type codeTries struct {
	Times []int64 `json:"t"`
	Links []int64 `json:"l,omitempty"`
}

// prune drops tries older than the window.
func (c *codeTries) prune(now time.Time) {
	c.Times = pruneTimes(c.Times, now)
	c.Links = pruneTimes(c.Links, now)
}

func pruneTimes(ts []int64, now time.Time) []int64 {
	keep := ts[:0]
	for _, t := range ts {
		if now.Sub(time.UnixMilli(t)) < userCodeTryWindow {
			keep = append(keep, t)
		}
	}
	return keep
}

// linksSpent tells whether GET links may no longer look codes up.
func (c *codeTries) linksSpent() bool { return len(c.Links) >= maxUserCodeTries }

// exhausted tells whether no wrong code is left, and when one will be.
func (c *codeTries) exhausted(now time.Time) (bool, time.Duration) {
	if len(c.Times) < maxUserCodeTries {
		return false, 0
	}
	oldest := c.Times[0]
	for _, t := range c.Times {
		oldest = min(oldest, t)
	}
	return true, time.UnixMilli(oldest).Add(userCodeTryWindow).Sub(now)
}

// triesKey is the storage key of a user's wrong-code counter.
func (o *OIDC) triesKey(s *session) string {
	iss := s.Identity.Issuer
	if iss == "" {
		iss = o.rt.issuer
	}
	h := sha256.Sum256([]byte(iss + "\x00" + s.Identity.Subject))
	return o.key("device/tries/" + hex.EncodeToString(h[:]))
}

// loadTries reads a counter; a missing one is empty. The caller holds its
// lock.
func (o *OIDC) loadTries(ctx context.Context, key string, now time.Time) (*codeTries, error) {
	var c codeTries
	b, err := o.storage.Load(ctx, key)
	if errors.Is(err, fs.ErrNotExist) {
		return &c, nil
	}
	if err != nil {
		return nil, err
	}
	if json.Unmarshal(b, &c) != nil {
		c = codeTries{} // unreadable: start again
	}
	c.prune(now)
	return &c, nil
}

// addTry records a wrong code of a POST (link false) or a GET link's miss
// (link true). The caller holds the counter's lock.
func (o *OIDC) addTry(ctx context.Context, key string, c *codeTries, now time.Time, link bool) error {
	list := &c.Times
	if link {
		list = &c.Links
	}
	*list = append(*list, now.UnixMilli())
	if len(*list) > maxUserCodeTries {
		*list = (*list)[len(*list)-maxUserCodeTries:]
	}
	b, _ := json.Marshal(c)
	return o.storage.Store(ctx, key, b)
}

// sweepCodeTries examines at most deviceSweepBatch counters, starting
// where the previous sweep stopped, and deletes those whose tries have all
// left the window.
func (o *OIDC) sweepCodeTries(ctx context.Context) {
	keys, err := o.storage.List(ctx, o.key("device/tries"), false)
	if err != nil {
		return
	}
	now := time.Now()
	for _, k := range o.rt.device.tries.window(keys, deviceSweepBatch) {
		if !isDeviceCodeKey(k) || o.storage.Lock(ctx, k+".lock") != nil {
			continue
		}
		if c, err := o.loadTries(ctx, k, now); err == nil && len(c.Times) == 0 && len(c.Links) == 0 {
			_ = o.storage.Delete(ctx, k)
		}
		_ = o.storage.Unlock(context.WithoutCancel(ctx), k+".lock")
	}
}
