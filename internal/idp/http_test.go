package idp

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestIdPBodyLimit(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		chunk := make([]byte, 64<<10)
		for i := range chunk {
			chunk[i] = ' '
		}
		for range 64 { // 4 MB of whitespace
			if _, err := w.Write(chunk); err != nil {
				return
			}
		}
	}))
	defer srv.Close()
	_, err := Discover(context.Background(), Config{Issuer: srv.URL, ClientID: "c", HTTP: NewHTTPClient(5 * time.Second)})
	if !errors.Is(err, ErrBodyTooLarge) {
		t.Fatalf("4 MB discovery document: %v", err)
	}
}
