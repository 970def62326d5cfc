package caddyoidc

import (
	"encoding/json"
	"github.com/caddy-oidc/caddy-oidc/internal/seal"
	"time"
)

// session is what a login leaves behind: the provider's tokens and the
// identity taken from the verified ID token (and userinfo).
type session struct {
	// ID is a random identifier: the key in the session store, the key of
	// refresh de-duplication.
	ID string `json:"sid"`
	// ProviderSID is the provider's session id (the ID token's `sid`).
	ProviderSID  string    `json:"psid,omitempty"`
	AccessToken  string    `json:"at,omitempty"`
	TokenType    string    `json:"tt,omitempty"`
	RefreshToken string    `json:"rt,omitempty"`
	IDToken      string    `json:"it,omitempty"`
	Expiry       int64     `json:"exp,omitempty"` // access token expiry, unix seconds; 0: unknown
	Created      int64     `json:"iat"`           // login time, unix seconds
	CreatedMs    int64     `json:"cms,omitempty"` // login time, unix milliseconds
	Identity     *identity `json:"id"`
	// GrantKey, when set, means the refresh token lives in the AZAT grant
	// store (one refresh token per user, shared by sessions and AZATs) and
	// refreshes go through the grant.
	GrantKey string `json:"gk,omitempty"`

	// revocationKeys: see sessionRevocationKeys (not stored).
	revocationKeys [3]string
}

// createdMs is the login time in milliseconds (sessions of earlier
// versions: the start of their second).
func (s *session) createdMs() int64 {
	if s.CreatedMs != 0 {
		return s.CreatedMs
	}
	return s.Created * 1000
}

// refreshable tells whether the session can get new tokens.
func (s *session) refreshable() bool { return s.RefreshToken != "" || s.GrantKey != "" }

func (s *session) expiry() time.Time {
	if s.Expiry == 0 {
		return time.Time{}
	}
	return time.Unix(s.Expiry, 0)
}

// needsRefresh tells whether the access token is missing, expired or
// expires within before.
func (s *session) needsRefresh(now time.Time, before time.Duration) bool {
	if s.AccessToken == "" {
		return true
	}
	if s.Expiry == 0 {
		return false
	}
	return now.Add(before).After(s.expiry())
}

// usable tells whether the access token can still be sent upstream.
func (s *session) usable(now time.Time) bool {
	return s.AccessToken != "" && (s.Expiry == 0 || now.Before(s.expiry()))
}

// labelIdentity marks the identity as coming from this session. Called once
// when a session is built or decoded: sessions are shared read-only between
// concurrent requests afterwards (see sessionCache).
func (s *session) labelIdentity() *session {
	if s.Identity != nil {
		s.Identity.Source = "session"
		s.Identity.GrantKey = s.GrantKey
		s.revocationKeys = sessionRevocationKeys(s)
	}
	return s
}

// sessionRevocationKeys are the keys under which revocations name s: its
// id, its provider session, its user. Computed once per decoded session,
// so the revocation check on the request path hashes nothing.
func sessionRevocationKeys(s *session) [3]string {
	k := [3]string{hashKey(s.ID), "", hashKey(s.Identity.Issuer, s.Identity.Subject)}
	if s.ProviderSID != "" {
		k[1] = hashKey(s.Identity.Issuer, s.ProviderSID)
	}
	return k
}

func encodeSession(s *session) []byte {
	b, _ := json.Marshal(s)
	return b
}

func decodeSession(b []byte) (*session, error) {
	var s session
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, err
	}
	if s.ID == "" || s.Identity == nil || s.Identity.Subject == "" {
		return nil, seal.ErrInvalid
	}
	return s.labelIdentity(), nil
}
