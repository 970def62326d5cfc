package caddyoidc

import (
	"net/http"
	"testing"

	"golang.org/x/oauth2"
)

// Only a definitive OAuth error from the token endpoint ends a session; a
// failed refresh must never drop tokens that may still work.
func TestRefreshTokenRefused(t *testing.T) {
	for _, tc := range []struct {
		name   string
		status int
		code   string
		want   bool
	}{
		{"invalid_grant 400", 400, "invalid_grant", true},
		{"invalid_grant 401", 401, "invalid_grant", true},
		{"dex spent refresh token: invalid_request 400", 400, "invalid_request", true},
		{"invalid_request 401", 401, "invalid_request", false},
		{"invalid_grant from a failing server (500)", 500, "invalid_grant", false},
		{"invalid_request 503", 503, "invalid_request", false},
		{"invalid_client (our credentials)", 401, "invalid_client", false},
		{"unauthorized_client", 400, "unauthorized_client", false},
		{"server_error", 500, "server_error", false},
		{"no OAuth error body", 502, "", false},
		{"no response", 0, "invalid_grant", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			re := &oauth2.RetrieveError{ErrorCode: tc.code}
			if tc.status != 0 {
				re.Response = &http.Response{StatusCode: tc.status}
			}
			if got := refreshTokenRefused(re); got != tc.want {
				t.Fatalf("refreshTokenRefused(%d %q) = %v, want %v", tc.status, tc.code, got, tc.want)
			}
		})
	}
}
