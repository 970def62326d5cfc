package caddyoidc

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"time"

	"github.com/caddyserver/certmagic"
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
	return o.sweepReplayMarkers(ctx, now) + o.rt.sessions.sweep(ctx, now)
}

// listBatch lists a storage prefix, at most sweepBatch keys from where cur
// left off (nil: from the start); a missing prefix is an empty list.
func listBatch(ctx context.Context, st certmagic.Storage, logger *zap.Logger, prefix string, cur *listCursor) []string {
	keys, err := st.List(ctx, prefix, false)
	if err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			logger.Warn("sweep: listing storage failed", errField(err))
		}
		return nil
	}
	if cur == nil {
		return keys[:min(len(keys), sweepBatch)]
	}
	return cur.window(keys, sweepBatch)
}

// sweepReplayMarkers deletes back-channel replay markers past their
// token's expiry (a replayed token is refused by its exp from then on).
func (o *OIDC) sweepReplayMarkers(ctx context.Context, now time.Time) int {
	n := 0
	for _, k := range listBatch(ctx, o.storage, o.logger, o.key("backchannel/jti"), &o.rt.sweepMarkers) {
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
