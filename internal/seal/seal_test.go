package seal

import (
	"strings"
	"testing"
)

func TestSealRoundTripAndTamper(t *testing.T) {
	s, err := New([]byte(strings.Repeat("k", 32)), "cookies")
	if err != nil {
		t.Fatal(err)
	}
	other, _ := New([]byte(strings.Repeat("x", 32)), "cookies")
	v := s.Seal([]byte("hello"), "session")
	if got, err := s.Open(v, "session"); err != nil || string(got) != "hello" {
		t.Fatalf("open = %q, %v", got, err)
	}
	flip := []byte(v)
	flip[len(flip)/2] ^= 1
	// 12-byte nonce + 6 + 16-byte tag = 34 bytes: the last base64 character
	// carries 4 padding bits; setting one spells the same bytes otherwise.
	odd := s.Seal([]byte("hello!"), "session")
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := strings.IndexByte(alphabet, odd[len(odd)-1])
	nonCanonical := odd[:len(odd)-1] + string(alphabet[last|1])
	if _, err := s.Open(odd, "session"); err != nil || last&15 != 0 {
		t.Fatalf("canonical value: %v (padding bits %b)", err, last&15)
	}
	tests := []struct {
		name, value, purpose string
		s                    *Sealer
	}{
		{"wrong purpose", v, "flow:abc", s},
		{"wrong key", v, "session", other},
		{"tampered", string(flip), "session", s},
		{"truncated", v[:10], "session", s},
		{"non-canonical base64", nonCanonical, "session", s},
		{"not base64", "!!!", "session", s},
		{"empty", "", "session", s},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.s.Open(tt.value, tt.purpose); err == nil {
				t.Fatal("opened an invalid value")
			}
		})
	}
	if _, err := New([]byte("short"), "x"); err == nil {
		t.Fatal("short secret accepted")
	}
}
