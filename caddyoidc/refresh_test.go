package caddyoidc

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"golang.org/x/sync/singleflight"
)

// TestRefreshPredicates: the one rule that decides a refresh, for sessions
// and grants alike, and the re-check once the record is re-read.
func TestRefreshPredicates(t *testing.T) {
	o := &OIDC{RefreshBefore: caddy.Duration(time.Minute)}
	now := time.Unix(1_000_000, 0)
	in := func(d time.Duration) int64 { return now.Add(d).Unix() }
	tests := []struct {
		name         string
		token        string
		expiry       int64
		needsRefresh bool
		usable       bool
	}{
		{"no token", "", 0, true, false},
		{"no expiry known", "at", 0, false, true},
		{"an hour left", "at", in(time.Hour), false, true},
		{"within refresh_before", "at", in(30 * time.Second), true, true},
		{"at refresh_before", "at", in(time.Minute), true, true},
		{"expired", "at", in(-time.Second), true, false},
		{"expires now", "at", in(0), true, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := o.needsRefresh(tc.token, tc.expiry, now); got != tc.needsRefresh {
				t.Errorf("needsRefresh = %v, want %v", got, tc.needsRefresh)
			}
			if got := tokenUsable(tc.token, tc.expiry, now); got != tc.usable {
				t.Errorf("tokenUsable = %v, want %v", got, tc.usable)
			}
		})
	}

	fresh := []struct {
		name   string
		token  string
		expiry int64
		stale  string
		force  bool
		want   bool
	}{
		{"refreshed meanwhile", "new", in(10 * time.Second), "old", false, true},
		{"refreshed meanwhile, forced", "new", in(10 * time.Second), "old", true, true},
		{"refreshed meanwhile but already expired", "new", in(-time.Second), "old", false, false},
		{"still the stale token", "old", in(10 * time.Second), "old", false, false},
		{"still the stale token, forced", "old", in(time.Hour), "old", true, false},
		{"not stale any more", "old", in(time.Hour), "old", false, true},
		{"no token yet", "", 0, "", false, false},
	}
	for _, tc := range fresh {
		t.Run("fresh/"+tc.name, func(t *testing.T) {
			if got := o.fresh(tc.token, tc.expiry, tc.stale, tc.force, now); got != tc.want {
				t.Errorf("fresh = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestCoordinate: concurrent refreshes of one record make one call; a
// caller that gives up does not cancel it for the others.
func TestCoordinate(t *testing.T) {
	o := &OIDC{IdPTimeout: caddy.Duration(time.Second), rt: &runtime{refreshes: new(singleflight.Group)}}
	var calls atomic.Int32
	release := make(chan struct{})
	fn := func(ctx context.Context) (string, error) {
		calls.Add(1)
		select {
		case <-release:
			return "fresh", nil
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	impatient, cancel := context.WithCancel(context.Background())
	impatientErr := make(chan error, 1)
	go func() {
		_, err := coordinate(impatient, o, "k", fn)
		impatientErr <- err
	}()
	for calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	var wg sync.WaitGroup
	results := make([]string, 10)
	for i := range results {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], _ = coordinate(context.Background(), o, "k", fn)
		}()
	}
	cancel()
	if err := <-impatientErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("impatient caller: %v", err)
	}
	time.Sleep(20 * time.Millisecond) // the others are waiting on the same call
	close(release)
	wg.Wait()
	for i, r := range results {
		if r != "fresh" {
			t.Fatalf("caller %d got %q", i, r)
		}
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d calls for one record, want 1", n)
	}
}

// TestRecentResults: a kept result is dropped only when it is still the
// one that was stored, and ends at its expiry.
func TestRecentResults(t *testing.T) {
	var c recentResults[*session]
	a, b := &session{ID: "a"}, &session{ID: "b"}
	c.put("k", a, time.Hour)
	c.drop("k", b) // b was stored, but a replaced it meanwhile
	if got, ok := c.get("k"); !ok || got != a {
		t.Fatal("dropping another result forgot the kept one")
	}
	c.drop("k", a)
	if _, ok := c.get("k"); ok {
		t.Fatal("the stored result is still kept")
	}
	c.put("k", a, -time.Second)
	if _, ok := c.get("k"); ok {
		t.Fatal("an expired result is served")
	}
	c.put("other", b, time.Hour) // sweeps the expired entry
	if _, ok := c.m["k"]; ok {
		t.Fatal("expired entries are not swept")
	}
}
