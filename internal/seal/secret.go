package seal

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io/fs"

	"github.com/caddyserver/certmagic"
)

// LoadOrCreateSecret returns the secret stored at key, generating and storing
// a random 32-byte one the first time. A storage lock makes instances that
// start together with shared storage agree on one secret.
func LoadOrCreateSecret(ctx context.Context, st certmagic.Storage, key string) (string, error) {
	if b, err := st.Load(ctx, key); err == nil && len(b) >= 32 {
		return string(b), nil
	}
	if err := st.Lock(ctx, key); err != nil {
		return "", err
	}
	defer st.Unlock(context.WithoutCancel(ctx), key) //nolint:errcheck
	b, err := st.Load(ctx, key)
	if err == nil && len(b) >= 32 {
		return string(b), nil
	}
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	secret := base64.RawURLEncoding.EncodeToString(raw)
	if err := st.Store(ctx, key, []byte(secret)); err != nil {
		return "", err
	}
	return secret, nil
}
