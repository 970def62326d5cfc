package testop

import (
	"fmt"
	"net/http"
)

// SetJWKSCacheControl makes the JWKS response (PathKeys) carry this
// Cache-Control header value, e.g. "public, max-age=120"; "" sends none
// (the default).
func (o *OP) SetJWKSCacheControl(v string) { o.jwksCacheControl.Store(&v) }

// jwksHeaders sets the configured caching header on a JWKS response.
func (o *OP) jwksHeaders(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != PathKeys {
		return
	}
	if v := o.jwksCacheControl.Load(); v != nil && *v != "" {
		w.Header().Set("Cache-Control", *v)
	}
}

// RemoveKey stops publishing the key kid in the JWKS, as a provider does
// when it retires a key (after RotateSigningKey, say). Tokens it signed
// before stay as they are. The current signing key cannot be removed.
func (o *OP) RemoveKey(kid string) error {
	r := o.store.keys
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.current.id == kid {
		return fmt.Errorf("testop: %q is the current signing key", kid)
	}
	for i, k := range r.public {
		if k.id == kid {
			r.public = append(r.public[:i:i], r.public[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("testop: no published key %q", kid)
}
