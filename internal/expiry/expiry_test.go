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
