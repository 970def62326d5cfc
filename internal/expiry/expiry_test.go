package expiry

import (
	"sync"
	"testing"
	"time"
)

func TestMap(t *testing.T) {
	now := time.Now()
	m := New[string, int](4)
	m.Put("a", 1, now.Add(time.Hour))
	m.Put("old", 2, now.Add(-time.Second))
	tests := []struct {
		key  string
		at   time.Time
		want int
		ok   bool
	}{
		{"a", now, 1, true},
		{"a", now.Add(time.Hour), 0, false}, // expiry is exclusive
		{"old", now, 0, false},
		{"missing", now, 0, false},
	}
	for _, tt := range tests {
		if got, ok := m.Get(tt.key, tt.at); got != tt.want || ok != tt.ok {
			t.Errorf("Get(%q) = %d, %v; want %d, %v", tt.key, got, ok, tt.want, tt.ok)
		}
	}
	if m.Add("a", 9, now.Add(time.Hour)) {
		t.Error("Add replaced an unexpired entry")
	}
	if !m.Add("old", 3, now.Add(time.Hour)) {
		t.Error("Add refused to replace an expired entry")
	}
	m.Delete("a")
	if _, ok := m.Get("a", now); ok {
		t.Error("Delete kept the entry")
	}
}

// TestMapBounded: a full map evicts expired entries first, then arbitrary
// ones, and never holds more than its bound.
func TestMapBounded(t *testing.T) {
	now := time.Now()
	m := New[int, int](100)
	for i := range 50 {
		m.Put(i, i, now.Add(-time.Second)) // expired
	}
	for i := 50; i < 100; i++ {
		m.Put(i, i, now.Add(time.Hour))
	}
	m.Put(100, 100, now.Add(time.Hour)) // full: the 50 expired go
	if n := m.Len(); n != 51 {
		t.Fatalf("after evicting expired entries: %d entries, want 51", n)
	}
	for i := 101; i < 1000; i++ {
		m.Put(i, i, now.Add(time.Hour))
		if n := m.Len(); n > 100 {
			t.Fatalf("%d entries, bound 100", n)
		}
	}
	if _, ok := m.Get(999, now); !ok {
		t.Error("the newest entry was evicted")
	}
}

func TestMapConcurrent(t *testing.T) {
	m := New[int, int](64)
	exp := time.Now().Add(time.Hour)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 1000 {
				m.Put(g*1000+i, i, exp)
				m.Get(i, time.Now())
				if i%7 == 0 {
					m.Delete(g*1000 + i)
				}
			}
		}()
	}
	wg.Wait()
	if n := m.Len(); n > 64 {
		t.Fatalf("%d entries, bound 64", n)
	}
}

// TestClaimNeverEvictsLive: replay markers survive a flood: a full map of
// live markers refuses new ones instead of dropping any, and takes new ones
// again once some expire.
func TestClaimNeverEvictsLive(t *testing.T) {
	now := time.Now()
	m := New[int, struct{}](100)
	for i := 0; i < 99; i++ {
		if added, full := m.Claim(i, struct{}{}, now.Add(time.Hour)); !added || full {
			t.Fatalf("claim %d: added %v full %v", i, added, full)
		}
	}
	m.Put(-1, struct{}{}, now.Add(-time.Second)) // one expired entry fills the map
	tests := []struct {
		key         int
		added, full bool
	}{
		{5, false, false},    // a replay
		{1000, true, false},  // takes the expired entry's room
		{1001, false, true},  // full of live markers: refused
		{5, false, false},    // still a replay: nothing was evicted
		{1000, false, false}, // the new marker holds too
	}
	for _, tt := range tests {
		if added, full := m.Claim(tt.key, struct{}{}, now.Add(time.Hour)); added != tt.added || full != tt.full {
			t.Errorf("Claim(%d) = %v, %v; want %v, %v", tt.key, added, full, tt.added, tt.full)
		}
	}
	for i := 0; i < 99; i++ {
		if _, ok := m.Get(i, now); !ok {
			t.Fatalf("live marker %d evicted", i)
		}
	}
}
