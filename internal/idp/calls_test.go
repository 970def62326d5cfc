package idp

import (
	"errors"
	"fmt"
	"testing"
)

// Only a definitive OAuth error from the token endpoint ends a session; a
// failed refresh must never drop tokens that may still work. (A 5xx never
// becomes an *OAuthError: do wraps it in ErrUnavailable.)
func TestRefreshTokenDead(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"invalid_grant 400", &OAuthError{Status: 400, Code: "invalid_grant"}, true},
		{"invalid_grant 401", &OAuthError{Status: 401, Code: "invalid_grant"}, true},
		{"dex spent refresh token: invalid_request 400", &OAuthError{Status: 400, Code: "invalid_request"}, true},
		{"invalid_request 401", &OAuthError{Status: 401, Code: "invalid_request"}, false},
		{"invalid_client (our credentials)", &OAuthError{Status: 401, Code: "invalid_client"}, false},
		{"unauthorized_client", &OAuthError{Status: 400, Code: "unauthorized_client"}, false},
		{"4xx without an OAuth error", &OAuthError{Status: 404}, false},
		{"unavailable", fmt.Errorf("%w: status 502", ErrUnavailable), false},
		{"network", errors.New("connection refused"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := RefreshTokenDead(tc.err); got != tc.want {
				t.Fatalf("RefreshTokenDead(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}
