package caddyoidc

import (
	"encoding/json"
	"reflect"
	"time"

	"github.com/caddy-oidc/caddy-oidc/internal/seal"

	"github.com/caddy-oidc/caddy-oidc/internal/idp"
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
	Identity     *identity `json:"-"`             // sealed as sealedSession says
	// GrantKey, when set, means the refresh token lives in the AZAT grant
	// store (one refresh token per user, shared by sessions and AZATs) and
	// refreshes go through the grant.
	GrantKey string `json:"gk,omitempty"`

	// revocationKeys: see sessionRevocationKeys (not stored).
	revocationKeys [3]string
	// persisted: this session was just stored by its refresh
	// (storedSessions.refresh), so saving it again is not needed. Never
	// carried into a copy (refresh.go resets it).
	persisted bool
	// spent is the refresh token the refresh that made this session spent
	// (not stored): it tells storedSessions that this session is the next
	// version of a record still holding that token.
	spent string
}

// createdMs is the login time in milliseconds (sessions of earlier
// versions: the start of their second).
func (s *session) createdMs() int64 {
	if s.CreatedMs != 0 {
		return s.CreatedMs
	}
	return s.Created * 1000
}

// until is when s ends: its login time plus lifetime (session_lifetime).
func (s *session) until(lifetime time.Duration) time.Time {
	return time.Unix(s.Created, 0).Add(lifetime)
}

// expired tells whether s is past lifetime at now.
func (s *session) expired(lifetime time.Duration, now time.Time) bool {
	return now.Sub(time.Unix(s.Created, 0)) > lifetime
}

// refreshable tells whether the session can get new tokens.
func (s *session) refreshable() bool { return s.RefreshToken != "" || s.GrantKey != "" }

// usable tells whether the access token can still be sent upstream.
func (s *session) usable(now time.Time) bool { return tokenUsable(s.AccessToken, s.Expiry, now) }

// labelIdentity marks the identity as coming from this session. Called once
// when a session is built or decoded: sessions are shared read-only between
// concurrent requests afterwards (the backends cache them).
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

// sealedSession is a session as sealed in its cookie or record. The
// identity is not written out when the session has an ID token: its claims
// are the ID token's (verified at login or refresh) plus Extra, the claims
// that came from elsewhere (userinfo) or differ, and its roles are Roles
// (they may come from the access token). Sessions without an ID token, and
// those an earlier version wrote, carry the whole identity in "id".
type sealedSession struct {
	*sessionFields
	Identity *identity      `json:"id,omitempty"`
	Roles    []string       `json:"r,omitempty"`
	Extra    map[string]any `json:"x,omitempty"`
}

// sessionFields is session without its methods, for JSON.
type sessionFields session

func encodeSession(s *session) []byte {
	w := sealedSession{sessionFields: (*sessionFields)(s)}
	if extra, ok := compactIdentity(s); ok {
		w.Roles, w.Extra = s.Identity.Roles, extra
	} else {
		w.Identity = s.Identity
	}
	b, _ := json.Marshal(w)
	return b
}

// compactIdentity returns the claims of s's identity that its ID token does
// not hold, and whether the identity is exactly what the ID token and those
// claims rebuild (else it is sealed whole: nothing a request needs is lost).
func compactIdentity(s *session) (map[string]any, bool) {
	if s.Identity == nil || s.IDToken == "" {
		return nil, false
	}
	base := idp.UnverifiedClaims(s.IDToken)
	if base == nil {
		return nil, false
	}
	var extra map[string]any
	for k, v := range s.Identity.Claims {
		if bv, ok := base[k]; !ok || !reflect.DeepEqual(bv, v) {
			if extra == nil {
				extra = map[string]any{}
			}
			extra[k] = v
		}
	}
	for k := range base {
		if _, ok := s.Identity.Claims[k]; !ok {
			return nil, false // a claim the identity dropped
		}
	}
	rebuilt := identityFromClaims(mergeClaims(base, extra), s.Identity.Roles)
	id := s.Identity
	if rebuilt.Issuer != id.Issuer || rebuilt.Subject != id.Subject || rebuilt.Email != id.Email ||
		rebuilt.Name != id.Name || rebuilt.PreferredUsername != id.PreferredUsername || rebuilt.ClientID != id.ClientID {
		return nil, false
	}
	return extra, true
}

// mergeClaims is base with extra's claims added (extra wins).
func mergeClaims(base, extra map[string]any) map[string]any {
	for k, v := range extra {
		base[k] = v
	}
	return base
}

func decodeSession(b []byte) (*session, error) {
	var s session
	w := sealedSession{sessionFields: (*sessionFields)(&s)}
	if err := json.Unmarshal(b, &w); err != nil {
		return nil, err
	}
	s.Identity = w.Identity
	if s.Identity != nil {
		s.Identity.ClientID = claimClientID(s.Identity.Claims) // not sealed
	} else if s.IDToken != "" {
		if base := idp.UnverifiedClaims(s.IDToken); base != nil {
			s.Identity = identityFromClaims(mergeClaims(base, w.Extra), w.Roles)
		}
	}
	if s.ID == "" || s.Identity == nil || s.Identity.Subject == "" {
		return nil, seal.ErrInvalid
	}
	return s.labelIdentity(), nil
}
