package idp

import (
	"context"
	"errors"
	"fmt"
	"net/url"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// CheckClientSecret checks the client's credentials at the token endpoint
// (the seed's verify_client_secret) with two bogus grants, which a provider
// that accepted the credentials answers with invalid_grant:
//
//   - a bogus authorization code: invalid_client or unauthorized_client mean
//     the credentials are wrong;
//   - a bogus refresh token (some providers, zitadel among them, look at the
//     code before authenticating the client): invalid_client means wrong
//     credentials (unauthorized_client may only mean that the client may not
//     refresh, so it proves nothing).
//
// It returns an error only for a definite refusal; ok is true when the
// provider accepted the credentials on both probes. An unreachable provider
// gives ok=false, err=nil.
func (c *Client) CheckClientSecret(ctx context.Context, redirect string) (ok bool, err error) {
	bogus := "caddy-oidc-client-check-" + seal.RandomString(12)
	code := c.tokenError(ctx, url.Values{
		"grant_type": {"authorization_code"}, "code": {bogus}, "redirect_uri": {redirect},
	})
	if code == "invalid_client" || code == "unauthorized_client" {
		return false, refusal(c.cfg.ClientID, code)
	}
	refresh := c.tokenError(ctx, url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {bogus},
	})
	if refresh == "invalid_client" {
		return false, refusal(c.cfg.ClientID, refresh)
	}
	return code == "invalid_grant" && refresh == "invalid_grant", nil
}

func refusal(clientID, code string) error {
	return fmt.Errorf("the provider refused client_id %q (%s): its client_secret is wrong, or the client may not use the authorization code flow", clientID, code)
}

// tokenError posts form to the token endpoint with the client's
// credentials and returns the OAuth error code of the answer ("" when none
// could be read).
func (c *Client) tokenError(ctx context.Context, form url.Values) string {
	var oe *OAuthError
	if err := c.post(ctx, c.meta.TokenEndpoint, form, authClient, nil); errors.As(err, &oe) {
		return oe.Code
	}
	return ""
}
