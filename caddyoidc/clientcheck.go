package caddyoidc

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"
)

// checkClientSecret checks the client's credentials at the token endpoint
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
func checkClientSecret(ctx context.Context, client *http.Client, tokenURL, clientID, secret, redirect string) (ok bool, err error) {
	bogus := "caddy-oidc-client-check-" + seal.RandomString(12)
	code := tokenError(ctx, client, tokenURL, clientID, secret, url.Values{
		"grant_type": {"authorization_code"}, "code": {bogus}, "redirect_uri": {redirect},
	})
	if code == "invalid_client" || code == "unauthorized_client" {
		return false, refusal(clientID, code)
	}
	refresh := tokenError(ctx, client, tokenURL, clientID, secret, url.Values{
		"grant_type": {"refresh_token"}, "refresh_token": {bogus},
	})
	if refresh == "invalid_client" {
		return false, refusal(clientID, refresh)
	}
	return code == "invalid_grant" && refresh == "invalid_grant", nil
}

func refusal(clientID, code string) error {
	return fmt.Errorf("the provider refused client_id %q (%s): its client_secret is wrong, or the client may not use the authorization code flow", clientID, code)
}

// tokenError posts form with the client's credentials (HTTP Basic) and
// returns the OAuth error code of the answer ("" when none could be read).
func tokenError(ctx context.Context, client *http.Client, tokenURL, clientID, secret string, form url.Values) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return ""
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.SetBasicAuth(url.QueryEscape(clientID), url.QueryEscape(secret))
	resp, err := client.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var e struct {
		Error string `json:"error"`
	}
	_ = json.Unmarshal(b, &e)
	return e.Error
}
