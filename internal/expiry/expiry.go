// Package expiry is a bounded in-memory map whose entries end at a given
// time: the caches of verified tokens, decoded sessions and grants.
package expiry

import (
	"sync"
	"time"
)

// Map maps keys to values until each entry's expiry. It holds at most Max
// entries: when full, expired entries go first, then arbitrary ones down to
// three quarters of Max. Safe for concurrent use; the zero value is not
// usable, use New.
type Map[K comparable, V any] struct {
	mu  sync.RWMutex
	max int
	m   map[K]entry[V]
}

type entry[V any] struct {
	v   V
	exp time.Time
}

// New returns a map holding at most max entries.
func New[K comparable, V any](max int) *Map[K, V] {
	return &Map[K, V]{max: max, m: make(map[K]entry[V])}
}

// Get returns the value of k if it has not expired at now.
func (c *Map[K, V]) Get(k K, now time.Time) (V, bool) {
	c.mu.RLock()
	e, ok := c.m[k]
	c.mu.RUnlock()
	if !ok || !now.Before(e.exp) {
		var zero V
		return zero, false
	}
	return e.v, true
}

// Put sets k to v until exp.
func (c *Map[K, V]) Put(k K, v V, exp time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.makeRoom(time.Now())
	c.m[k] = entry[V]{v: v, exp: exp}
}

// Add sets k to v until exp unless k is present and unexpired; it reports
// whether it did.
func (c *Map[K, V]) Add(k K, v V, exp time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if e, ok := c.m[k]; ok && now.Before(e.exp) {
		return false
	}
	c.makeRoom(now)
	c.m[k] = entry[V]{v: v, exp: exp}
	return true
}

// Claim is Add for entries that must not be evicted (replay markers): when
// the map is full of unexpired entries it refuses to add (full true)
// instead of dropping any of them.
func (c *Map[K, V]) Claim(k K, v V, exp time.Time) (added, full bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if e, ok := c.m[k]; ok && now.Before(e.exp) {
		return false, false
	}
	if len(c.m) >= c.max {
		for k, e := range c.m {
			if !now.Before(e.exp) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= c.max {
			return false, true
		}
	}
	c.m[k] = entry[V]{v: v, exp: exp}
	return true, false
}

// Delete forgets k.
func (c *Map[K, V]) Delete(k K) {
	c.mu.Lock()
	delete(c.m, k)
	c.mu.Unlock()
}

// Len returns the number of entries, expired or not.
func (c *Map[K, V]) Len() int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.m)
}

// makeRoom evicts when the map is full; c.mu is held.
func (c *Map[K, V]) makeRoom(now time.Time) {
	if len(c.m) < c.max {
		return
	}
	for k, e := range c.m {
		if !now.Before(e.exp) {
			delete(c.m, k)
		}
	}
	for k := range c.m {
		if len(c.m) < c.max*3/4 {
			break
		}
		delete(c.m, k)
	}
}
