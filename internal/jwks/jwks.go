// Package jwks fetches a JSON Web Key Set (RFC 7517 §5): the one fetcher
// used for a provider's keys (internal/idp) and for a trusted site's AZAT
// keys (azatauth). Bounded in size; a caller's http.Client bounds it in
// time.
package jwks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// MaxBody bounds a fetched JWKS document.
const MaxBody = 1 << 20

// ErrTooLarge: the document is larger than MaxBody.
var ErrTooLarge = errors.New("jwks larger than 1 MiB")

// Fetch GETs the JWKS at url and parses it. It returns the response headers
// too (their Cache-Control says how long the keys may be used).
func Fetch(ctx context.Context, client *http.Client, url string) (jwk.Set, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, nil, err
	}
	req.Header.Set("Accept", "application/json, application/jwk-set+json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("fetching jwks: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("fetching jwks: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, MaxBody+1))
	if err != nil {
		return nil, nil, fmt.Errorf("reading jwks: %w", err)
	}
	if len(body) > MaxBody {
		return nil, nil, ErrTooLarge
	}
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing jwks: %w", err)
	}
	return set, resp.Header, nil
}
