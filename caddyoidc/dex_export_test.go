package caddyoidc

import (
	"errors"
	"os"
	"path/filepath"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// CookieSessionRefreshToken opens a cookie-mode session cookie value (its
// chunks joined) with the cookie secrets Caddy keeps under storageDir, one
// per namespace, and returns the refresh token the session holds. Tests use
// it to spend a session's refresh token behind the module's back.
func CookieSessionRefreshToken(storageDir, value string) (string, error) {
	dirs, _ := filepath.Glob(filepath.Join(storageDir, "caddy-oidc", "ns", "*"))
	for _, dir := range dirs {
		secret, err := os.ReadFile(filepath.Join(dir, "cookie_secret"))
		if err != nil {
			continue
		}
		sealer, err := seal.New(secret, "cookies\x00"+filepath.Base(dir))
		if err != nil {
			return "", err
		}
		pt, err := sealer.Open(value, "session")
		if err != nil {
			continue
		}
		s, err := decodeSession(pt)
		if err != nil {
			return "", err
		}
		return s.RefreshToken, nil
	}
	return "", errors.New("no namespace's cookie secret opens the session cookie")
}
