package caddyoidc

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// TestListCursorWindow: consecutive windows walk the listing and wrap
// around; a window never exceeds n nor repeats a key; a listing that shrank
// below the cursor restarts inside it; empty listings and n <= 0 give
// nothing.
func TestListCursorWindow(t *testing.T) {
	keys := []string{"a", "b", "c", "d", "e"}
	var c listCursor
	for i, want := range []string{"ab", "cd", "ea", "bc", "de", "ab"} {
		if got := strings.Join(c.window(keys, 2), ""); got != want {
			t.Fatalf("window %d: %q, want %q", i, got, want)
		}
	}
	var whole listCursor
	for range 3 {
		if got := strings.Join(whole.window(keys, 10), ""); got != "abcde" {
			t.Fatalf("n > len: %q", got)
		}
	}
	var shrink listCursor
	shrink.window(keys, 4)                                                // cursor at 4
	if got := strings.Join(shrink.window(keys[:3], 2), ""); got != "bc" { // 4 % 3 = 1
		t.Fatalf("after the listing shrank: %q", got)
	}
	if w := c.window(nil, 5); w != nil {
		t.Fatalf("empty listing: %v", w)
	}
	if w := c.window(keys, 0); w != nil {
		t.Fatalf("n = 0: %v", w)
	}
}

// TestListCursorReachesEveryKey: the shape of the stuck sweep (a batch of
// 1000 over a larger sorted listing): within ceil(len/n) sweeps every key is
// examined, not only the first n.
func TestListCursorReachesEveryKey(t *testing.T) {
	for _, tt := range []struct{ keys, n int }{{2500, 1000}, {1001, 1000}, {1000, 1000}, {7, 3}} {
		keys := make([]string, tt.keys)
		for i := range keys {
			keys[i] = fmt.Sprintf("k%06d", i)
		}
		var c listCursor
		seen := map[string]bool{}
		for range (tt.keys + tt.n - 1) / tt.n {
			w := c.window(keys, tt.n)
			if len(w) > tt.n || len(slices.Compact(slices.Sorted(slices.Values(w)))) != len(w) {
				t.Fatalf("%d keys, n %d: window of %d with repeats", tt.keys, tt.n, len(w))
			}
			for _, k := range w {
				seen[k] = true
			}
		}
		if len(seen) != tt.keys {
			t.Fatalf("%d keys, n %d: %d examined", tt.keys, tt.n, len(seen))
		}
	}
}
