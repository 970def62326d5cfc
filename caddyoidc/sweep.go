package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"
)

// The sweep deletes what storage would otherwise keep forever: stored
// sessions past session_lifetime (also deleted when met), session index
// entries whose session is gone, and back-channel replay markers past their
// token's expiry. Every instance sweeps every sweepInterval; one run looks
// at no more than sweepBatch records of each kind, so it stays cheap
// however large storage grows; each kind goes on next run where the last
// one stopped (listCursor), so a backlog is worked off over several runs.

const (
	sweepInterval = 10 * time.Minute
	sweepBatch    = 1000
)

// watchSweep sweeps until ctx ends, the first time one minute after start.
func (o *OIDC) watchSweep(ctx context.Context) {
	first := time.NewTimer(time.Minute)
	defer first.Stop()
	select {
	case <-ctx.Done():
		return
	case <-first.C:
	}
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		n := o.sweep(ctx, time.Now())
		if n > 0 {
			o.logger.Debug("swept expired records", zap.Int("deleted", n))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// sweep runs once and returns how many records it deleted.
func (o *OIDC) sweep(ctx context.Context, now time.Time) int {
	n := o.sweepReplayMarkers(ctx, now)
	if o.Session == "store" {
		n += o.sweepSessions(ctx, now)
		n += o.sweepIndex(ctx)
	}
	return n
}

// sweepCursors say where each sweep goes on next run.
type sweepCursors struct{ sessions, sids, subs, markers listCursor }

// list lists a storage prefix, at most sweepBatch keys from where cur left
// off (nil: from the start); a missing prefix is an empty list.
func (o *OIDC) list(ctx context.Context, prefix string, cur *listCursor) []string {
	keys, err := o.storage.List(ctx, prefix, false)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			o.logger.Warn("sweep: listing storage failed", errField(err))
		}
		return nil
	}
	if cur == nil {
		return keys[:min(len(keys), sweepBatch)]
	}
	return cur.window(keys, sweepBatch)
}

func (o *OIDC) sweepSessions(ctx context.Context, now time.Time) int {
	n := 0
	for _, k := range o.list(ctx, o.key("sessions"), &o.rt.sweeps.sessions) {
		b, err := o.storage.Load(ctx, k)
		if err != nil {
			continue
		}
		head, _, _ := strings.Cut(string(b), ".")
		until, err := strconv.ParseInt(head, 10, 64)
		expired := err != nil || until < now.Unix() // unreadable records go too
		if expired && o.storage.Delete(ctx, k) == nil {
			n++
		}
	}
	return n
}

// sweepIndex deletes index entries whose session no longer exists.
func (o *OIDC) sweepIndex(ctx context.Context) int {
	n, seen := 0, 0
	for kind, cur := range map[string]*listCursor{"sid": &o.rt.sweeps.sids, "sub": &o.rt.sweeps.subs} {
		for _, dir := range o.list(ctx, indexPrefix+kind, cur) {
			for _, k := range o.list(ctx, dir, nil) {
				if seen++; seen > sweepBatch {
					return n
				}
				b, err := o.storage.Load(ctx, k)
				if err != nil {
					continue
				}
				id, err := o.rt.sealer.Open(string(b), "session-index")
				if (err != nil || !o.storage.Exists(ctx, sessionKey(string(id)))) && o.storage.Delete(ctx, k) == nil {
					n++
				}
			}
		}
	}
	return n
}

// sweepReplayMarkers deletes back-channel replay markers past their
// token's expiry (a replayed token is refused by its exp from then on).
func (o *OIDC) sweepReplayMarkers(ctx context.Context, now time.Time) int {
	n := 0
	for _, k := range o.list(ctx, o.key("backchannel/jti"), &o.rt.sweeps.markers) {
		b, err := o.storage.Load(ctx, k)
		if err != nil {
			continue
		}
		var exp int64
		if json.Unmarshal(b, &exp) != nil || exp < now.Unix() {
			if o.storage.Delete(ctx, k) == nil {
				n++
			}
		}
	}
	return n
}
