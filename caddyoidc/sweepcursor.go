package caddyoidc

import "sync"

// listCursor is where a bounded sweep of a storage listing goes on next
// time. A sweep examines at most a batch of the listed keys; listings are
// usually sorted, so a sweep that always started at the first key would
// examine the same live entries every run and never reach the ones after
// them. The zero value starts at the first key; it is safe for concurrent
// use.
type listCursor struct {
	mu   sync.Mutex
	next int
}

// window returns at most n of keys, starting where the previous window
// ended and wrapping around at the end, and moves the cursor past them.
// The position is an index: keys added or deleted between sweeps shift it,
// so a key may be seen twice or skipped once, but every key present through
// ceil(len(keys)/n) consecutive sweeps of a stable listing is seen. The
// result may share keys' backing array; callers only read it.
func (c *listCursor) window(keys []string, n int) []string {
	if len(keys) == 0 || n <= 0 {
		return nil
	}
	n = min(n, len(keys))
	c.mu.Lock()
	start := c.next % len(keys)
	c.next = (start + n) % len(keys)
	c.mu.Unlock()
	if start+n <= len(keys) {
		return keys[start : start+n]
	}
	out := make([]string, 0, n)
	out = append(out, keys[start:]...)
	return append(out, keys[:n-(len(keys)-start)]...)
}
