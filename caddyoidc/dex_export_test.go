package caddyoidc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// SessionRefreshToken opens a session cookie value (its chunks joined) with
// the cookie secrets Caddy keeps under storageDir (file_system storage), one
// per namespace, and returns the refresh token the session holds: from the
// cookie itself (session cookie) or from its stored record (session store).
// Tests use it to spend a session's refresh token behind the module's back.
func SessionRefreshToken(storageDir, value string) (string, error) {
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
			id, err := sealer.Open(value, "session-id")
			if err != nil {
				continue
			}
			rec, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(strings.TrimPrefix(sessionKey(string(id)), "caddy-oidc/"))))
			if err != nil {
				return "", err
			}
			_, sealed, _ := strings.Cut(string(rec), ".")
			if pt, err = sealer.Open(sealed, "stored-session:"+string(id)); err != nil {
				return "", err
			}
		}
		s, err := decodeSession(pt)
		if err != nil {
			return "", err
		}
		return s.RefreshToken, nil
	}
	return "", errors.New("no namespace's cookie secret opens the session cookie")
}
