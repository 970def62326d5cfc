// Package nsstore confines a Caddy storage to one namespace of this
// project's handlers (see caddyoidc/namespace.go): the one place where the
// storage keys of a namespace are made.
package nsstore

import (
	"context"
	"errors"
	"io/fs"
	"strings"

	"github.com/caddyserver/certmagic"
)

// Prefix is the prefix of every key the project's handlers use; under it,
// "ns/<id>/" holds each namespace.
const Prefix = "caddy-oidc/"

// Storage confines a certmagic.Storage to one namespace: the key
// "caddy-oidc/<rel>" (or any other key) is stored at
// "caddy-oidc/ns/<id>/<rel>", and listings answer keys in the caller's
// spelling. It is the one place where a handler's storage keys are made,
// so no key can escape the namespace.
type Storage struct {
	certmagic.Storage
	root string // "caddy-oidc/ns/<id>/"
}

// New confines st to namespace id.
func New(st certmagic.Storage, id string) *Storage {
	return &Storage{Storage: st, root: Prefix + "ns/" + id + "/"}
}

// inner maps a caller's key to the stored key.
func (s *Storage) inner(key string) string {
	return s.root + strings.TrimPrefix(key, Prefix)
}

// outer maps a stored key back to the caller's spelling.
func (s *Storage) outer(key string) string {
	if rel, ok := strings.CutPrefix(key, s.root); ok {
		return Prefix + rel
	}
	return key
}

func (s *Storage) Lock(ctx context.Context, name string) error {
	return s.Storage.Lock(ctx, s.inner(name))
}

func (s *Storage) Unlock(ctx context.Context, name string) error {
	return s.Storage.Unlock(ctx, s.inner(name))
}

func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	return s.Storage.Store(ctx, s.inner(key), value)
}

func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	return s.Storage.Load(ctx, s.inner(key))
}

func (s *Storage) Delete(ctx context.Context, key string) error {
	return s.Storage.Delete(ctx, s.inner(key))
}

func (s *Storage) Exists(ctx context.Context, key string) bool {
	return s.Storage.Exists(ctx, s.inner(key))
}

func (s *Storage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	keys, err := s.Storage.List(ctx, s.inner(path), recursive)
	for i, k := range keys {
		keys[i] = s.outer(k)
	}
	return keys, err
}

func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	ki, err := s.Storage.Stat(ctx, s.inner(key))
	ki.Key = s.outer(ki.Key)
	return ki, err
}

// IDs lists the namespaces present in st.
func IDs(ctx context.Context, st certmagic.Storage) ([]string, error) {
	keys, err := st.List(ctx, Prefix+"ns", false)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	ids := make([]string, 0, len(keys))
	for _, k := range keys {
		ids = append(ids, strings.TrimPrefix(k, Prefix+"ns/"))
	}
	return ids, err
}

// Interface guards
var _ certmagic.Storage = (*Storage)(nil)
